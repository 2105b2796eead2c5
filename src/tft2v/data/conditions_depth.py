"""Depth conditions from a depth network loaded from a local file (nothing is downloaded).

Interface: a depth network is any ``torch.nn.Module`` (or TorchScript module) mapping frames
``(N, 3, h, w)`` in [-1, 1] to relative inverse depth ``(N, 1, h, w)`` or ``(N, h, w)``, larger =
nearer, as MiDaS does. :class:`DepthEstimator` runs it frame by frame over a video batch
``(B, 3, F, H, W)`` and returns ``(B, 1, F, H, W)`` with VGen's post-processing
``clamp(raw / depth_std, 0, depth_clamp)`` (VGen: MiDaS v3 DPT-Large, std 20, clamp 10).

Training loads the network once and moves it to the batch's device once::

    depth = load_depth_model(path).to(device)
    extract_conditions(video, ["depth"], depth_model=depth)

A path given to :func:`tft2v.data.conditions.extract_conditions` instead (one-off CLI / web UI use) is
loaded on first use and kept (:func:`cached_depth_model`), not reread on every call.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tft2v.errors import CheckpointError, TFT2VError


class DepthEstimator(nn.Module):
    """A depth network (in eval mode) plus its input size and VGen-style output scaling; frames go
    through it ``chunk`` at a time. A module: ``.to(device)`` moves the network, and it must sit on
    the video's device when called."""

    def __init__(
        self,
        net: nn.Module,
        input_size: tuple[int, int] | None = None,
        depth_std: float = 20.0,
        depth_clamp: float = 10.0,
        chunk: int = 32,
    ) -> None:
        if depth_std <= 0 or depth_clamp <= 0:
            raise TFT2VError(f"depth_std and depth_clamp must be > 0, got {depth_std}, {depth_clamp}")
        super().__init__()
        self.net = net  # expected in eval mode (exported programs cannot switch modes)
        self.input_size, self.depth_std, self.depth_clamp, self.chunk = input_size, depth_std, depth_clamp, chunk

    @property
    def device(self) -> torch.device | None:
        """Where the network's weights are; None for a network without weights."""
        for t in itertools.chain(self.net.parameters(), self.net.buffers()):
            return t.device
        return None

    @torch.no_grad()
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, F, H, W) in [-1, 1] → (B, 1, F, H, W) in [0, depth_clamp], on the video's device."""
        device = self.device
        if device is not None and device != video.device:
            # Moving a large network per call would hide a per-step copy; the caller moves it once.
            raise TFT2VError(f"the depth model is on {device} but the video is on {video.device}; "
                             f"move it once with .to({str(video.device)!r}) after loading")
        b, _, f, h, w = video.shape
        frames = video.permute(0, 2, 1, 3, 4).reshape(b * f, 3, h, w)  # (B·F, 3, H, W)
        outs = []
        for part in frames.split(self.chunk):
            if self.input_size is not None:
                part = F.interpolate(part, size=self.input_size, mode="bilinear", align_corners=False)
            raw = self.net(part)
            if raw.ndim == 3:
                raw = raw.unsqueeze(1)
            if raw.ndim != 4 or raw.shape[1] != 1:
                raise TFT2VError(f"depth network must return (N, 1, h, w) or (N, h, w), got {tuple(raw.shape)}")
            outs.append(F.interpolate(raw.float(), size=(h, w), mode="bilinear", align_corners=False))
        depth = torch.cat(outs).div(self.depth_std).clamp(0.0, self.depth_clamp)  # (B·F, 1, H, W)
        return depth.reshape(b, f, 1, h, w).permute(0, 2, 1, 3, 4)


def luminance(video: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma: (B, 3, F, H, W) in [-1, 1] → (B, 1, F, H, W) in [0, 1].

    Also the crude depth fallback, used only when asked for by name (``depth_model="luminance"``):
    brightness as "nearness". It is not depth; it suits the shapes world (bright objects in front of
    a dark background) and smoke tests.
    """
    rgb = (video.float() + 1) / 2
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1, 1)
    return (rgb * weights).sum(dim=1, keepdim=True).clamp(0.0, 1.0)


def load_depth_model(path: Path | str, module: nn.Module | None = None, **kwargs) -> DepthEstimator:
    """Load a depth network from a local file.

    Without ``module``: ``path`` is an exported program (``.pt2``, ``torch.export.save``; it runs at
    the batch size it was exported with unless exported with dynamic shapes, see ``chunk``) or a
    TorchScript file (``torch.jit.save``). With ``module``: ``path``
    is its state dict (``.safetensors``, or ``.pt``/``.pth`` read with ``weights_only=True``; a
    ``{'state_dict': ...}`` wrapper is accepted) and is loaded strictly. ``kwargs`` go to
    :class:`DepthEstimator` (``input_size``, ``depth_std``, ``depth_clamp``).

    The estimator comes back on the CPU (an exported program: on the device it was saved from); move it
    once with ``.to(device)``. Load it once per run: this reads the whole file.
    """
    path = Path(path)
    if not path.is_file():
        raise TFT2VError(f"depth model file {path} not found")
    if module is None and path.suffix == ".pt2":
        try:
            net = torch.export.load(str(path)).module()
        except Exception as e:  # export deserialisation raises many types; report one line
            raise CheckpointError(f"cannot load exported depth model {path}: {type(e).__name__}") from None
        return DepthEstimator(net, **kwargs)
    if module is None:
        try:
            net = torch.jit.load(str(path), map_location="cpu").eval()
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"{path} is not a TorchScript depth model ({first}); pass module= to load a state dict"
            ) from None
        return DepthEstimator(net, **kwargs)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # pickle / zip errors come in many types; report them as one line
            raise CheckpointError(f"cannot read depth weights {path}: {type(e).__name__}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"depth weights {path} do not match the module: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return DepthEstimator(module.eval(), **kwargs)


def cached_depth_model(path: Path | str) -> DepthEstimator:
    """:func:`load_depth_model` of a TorchScript / exported file, kept across calls: the same unchanged
    file is read once (a rewritten file, by size or mtime, is read again). Only the latest file is kept."""
    path = Path(path)
    if not path.is_file():
        raise TFT2VError(f"depth model file {path} not found")
    stat = path.stat()
    return _load_stamped(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)
def _load_stamped(path: str, mtime_ns: int, size: int) -> DepthEstimator:
    # mtime_ns and size are only part of the cache key, so a rewritten file misses the cache.
    return load_depth_model(path)
