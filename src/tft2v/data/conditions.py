"""On-the-fly compositional conditions (VideoComposer / VGen) from a video batch.

Layout: input video ``(B, 3, F, H, W)`` in [-1, 1] (an image is F = 1); every condition comes back
as ``(B, c, F, H, W)`` with VGen's channel counts:

=============  ==  =========================================================================
name           c   content
=============  ==  =========================================================================
sketch         1   edge strength per frame in [0, 1], **1 on edges, 0 elsewhere** — the polarity
                   of VGen's final sketch (``1 - simplify(1 - pidinet)``); here a Sobel edge map
                   of the lightly blurred luminance, scaled by the clip's strongest edge
single_sketch  1   the first frame's sketch repeated over F
depth          1   a local depth network (:mod:`tft2v.data.conditions_depth`), VGen scaling
motion         2   forward (dx, dy) px/frame; codec vectors when given, else block matching
                   (:mod:`tft2v.data.conditions_motion`)
masked         4   ``cat(video·(1−m), 1−m)`` with one random mask m per sample (1 = hidden),
                   shared by all frames: irregular strokes 70 %, rectangle 20 %, uncrop 10 %
local_image    3   the first frame in [0, 1] repeated over F
=============  ==  =========================================================================

Every condition is made on the video's device; the random masks draw from the given generator on the
generator's own device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tft2v.data.conditions_depth import DepthEstimator, cached_depth_model, luminance
from tft2v.data.conditions_motion import estimate_motion
from tft2v.errors import TFT2VError
from tft2v.models.conditions import CONDITION_CHANNELS

CONDITION_NAMES = tuple(CONDITION_CHANNELS)  # the models' list is the one source of names and order
MASK_KINDS = ("irregular", "rectangle", "uncrop")
MASK_PROBS = (0.7, 0.2, 0.1)  # VGen's irregular / rectangle / uncrop mix
_SKETCH_FLOOR = 0.05  # luminance gradient below which a clip is treated as flat (no edges)


def extract_conditions(
    video: torch.Tensor,
    names: list[str] | tuple[str, ...],
    generator: torch.Generator | None = None,
    depth_model: DepthEstimator | str | None = None,
    motion_vectors: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Compute the named conditions of a video batch ``(B, 3, F, H, W)`` in [-1, 1].

    Every condition is made on ``video.device``. ``generator`` seeds the random masks ("masked"); it
    draws on its own device (training: the model's). ``depth_model`` is a :class:`DepthEstimator` on
    the video's device (training loads it once: ``load_depth_model(path).to(device)``), a path to a
    TorchScript / exported depth network (one-off use: loaded on first use and kept), or the string
    ``"luminance"`` for the documented crude fallback; it is required for "depth". ``motion_vectors``
    ``(B, 2, F, H, W)`` (e.g. from :func:`tft2v.data.conditions_motion.read_codec_motion_vectors`) are
    used for "motion" when given (moved to the video's device, like the pixels they come with);
    otherwise motion is estimated from the frames by block matching.
    """
    _check_video(video)
    unknown = [n for n in names if n not in CONDITION_NAMES]
    if unknown:
        raise TFT2VError(f"unknown condition(s) {unknown}; expected some of {list(CONDITION_NAMES)}")
    out: dict[str, torch.Tensor] = {}
    edges = sketch(video) if {"sketch", "single_sketch"} & set(names) else None
    for name in names:
        if name == "sketch":
            out[name] = edges
        elif name == "single_sketch":
            out[name] = edges[:, :, :1].expand_as(edges).contiguous()
        elif name == "depth":
            out[name] = _depth(video, depth_model)
        elif name == "motion":
            out[name] = _motion(video, motion_vectors)
        elif name == "masked":
            masks = random_masks(video.shape[0], *video.shape[-2:], generator=generator, device=video.device)
            out[name] = masked_video(video, masks)
        else:
            out[name] = local_image(video)
    return out


def sketch(video: torch.Tensor) -> torch.Tensor:
    """Edge map per frame: (B, 3, F, H, W) in [-1, 1] → (B, 1, F, H, W) in [0, 1], edges = 1."""
    _check_video(video)
    b, _, f, h, w = video.shape
    luma = luminance(video).reshape(b * f, 1, h, w)  # (B·F, 1, H, W) in [0, 1]
    blur = torch.tensor([1.0, 2.0, 1.0], device=video.device) / 4
    luma = F.conv2d(F.pad(luma, (1, 1, 1, 1), mode="replicate"), (blur[:, None] * blur[None, :]).view(1, 1, 3, 3))
    sobel_x = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], device=video.device) / 8
    kernels = torch.stack([sobel_x, sobel_x.T]).unsqueeze(1)  # (2, 1, 3, 3)
    grad = F.conv2d(F.pad(luma, (1, 1, 1, 1), mode="replicate"), kernels)  # (B·F, 2, H, W)
    magnitude = grad.pow(2).sum(dim=1).sqrt().reshape(b, 1, f, h, w)
    # One scale per clip (not per frame) so edges do not flicker in strength across frames.
    peak = magnitude.amax(dim=(2, 3, 4), keepdim=True).clamp_min(_SKETCH_FLOOR)
    return (magnitude / peak).clamp(0.0, 1.0)


def local_image(video: torch.Tensor) -> torch.Tensor:
    """The first frame in [0, 1] repeated over F: (B, 3, F, H, W) → (B, 3, F, H, W)."""
    _check_video(video)
    return ((video[:, :, :1].float() + 1) / 2).clamp(0, 1).expand_as(video).contiguous()


def masked_video(video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """VGen's masked condition ``cat(video·(1−m), 1−m)``: video (B, 3, F, H, W), mask (B, 1, H, W)
    with 1 = hidden, on the video's device → (B, 4, F, H, W)."""
    _check_video(video)
    if mask.device != video.device:
        # Moving it here would hide a caller that builds masks on the wrong device every step.
        raise TFT2VError(f"mask is on {mask.device} but the video is on {video.device}; make the mask on the "
                         f"video's device (random_masks(..., device=video.device))")
    b, _, f, h, w = video.shape
    if mask.shape != (b, 1, h, w):
        raise TFT2VError(f"mask must be {(b, 1, h, w)} for this video, got {tuple(mask.shape)}")
    keep = (1 - mask.to(video.dtype)).unsqueeze(2).expand(b, 1, f, h, w)  # (B, 1, F, H, W)
    return torch.cat([video * keep, keep], dim=1)


def random_masks(
    batch: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    probs: tuple[float, float, float] = MASK_PROBS,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random inpainting/outpainting masks (B, 1, H, W) float on ``device``, 1 = hidden; kind per
    sample drawn with ``probs`` over (irregular strokes, rectangle, uncrop border).

    The kinds and shapes are drawn from ``generator`` on the generator's own device; ``device``
    defaults to the generator's. Without ``generator`` they come from a fixed CPU seed (0), so the
    default masks are reproducible and the same on every device."""
    if len(probs) != 3 or min(probs) < 0 or sum(probs) <= 0:
        raise TFT2VError(f"mask probs must be three non-negative weights, got {probs}")
    g = generator if generator is not None else torch.Generator(device="cpu").manual_seed(0)
    device = torch.device(device) if device is not None else g.device
    weights = torch.tensor(probs, dtype=torch.float64, device=g.device)  # float64: CPU draws as before
    kinds = torch.multinomial(weights, batch, replacement=True, generator=g)
    ys, xs = torch.meshgrid(torch.arange(height, device=device) + 0.5, torch.arange(width, device=device) + 0.5,
                            indexing="ij")  # pixel centres (H, W)
    masks = torch.zeros(batch, 1, height, width, device=device)
    for i, kind in enumerate(kinds.tolist()):
        draw = (_irregular, _rectangle, _uncrop)[kind]
        masks[i, 0] = draw(ys, xs, g).float()
    return masks


def _rand(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    # Drawn where the generator lives (a CUDA generator cannot fill a CPU tensor); the value drives
    # host-side geometry, hence .item().
    return lo + (hi - lo) * torch.rand((), generator=g, device=g.device).item()


def _irregular(ys: torch.Tensor, xs: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """1–4 thick random polyline strokes (a free-form brush mask)."""
    h, w = ys.shape
    side = min(h, w)
    mask = torch.zeros(h, w, dtype=torch.bool, device=ys.device)
    for _ in range(int(_rand(g, 1, 5))):
        radius = _rand(g, 0.05, 0.12) * side
        x, y = _rand(g, 0, w), _rand(g, 0, h)
        for _ in range(int(_rand(g, 2, 7))):
            angle, length = _rand(g, 0, 2 * math.pi), _rand(g, 0.15, 0.4) * side
            nx = min(max(x + length * math.cos(angle), 0.0), w)
            ny = min(max(y + length * math.sin(angle), 0.0), h)
            mask |= _segment_distance(xs, ys, x, y, nx, ny) <= radius
            x, y = nx, ny
    return mask


def _segment_distance(xs, ys, x0: float, y0: float, x1: float, y1: float) -> torch.Tensor:
    dx, dy = x1 - x0, y1 - y0
    t = (((xs - x0) * dx + (ys - y0) * dy) / max(dx * dx + dy * dy, 1e-9)).clamp(0, 1)
    return torch.hypot(xs - (x0 + t * dx), ys - (y0 + t * dy))


def _rectangle(ys: torch.Tensor, xs: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One axis-aligned box of 30–70 % of each side, anywhere in frame."""
    return _box(ys, xs, g, 0.3, 0.7)


def _uncrop(ys: torch.Tensor, xs: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Everything outside a kept box of 50–80 % of each side is hidden (outpainting)."""
    return ~_box(ys, xs, g, 0.5, 0.8)


def _box(ys: torch.Tensor, xs: torch.Tensor, g: torch.Generator, lo: float, hi: float) -> torch.Tensor:
    h, w = ys.shape
    bh, bw = _rand(g, lo, hi) * h, _rand(g, lo, hi) * w
    top, left = _rand(g, 0, h - bh), _rand(g, 0, w - bw)
    return (ys >= top) & (ys < top + bh) & (xs >= left) & (xs < left + bw)


def _depth(video: torch.Tensor, depth_model) -> torch.Tensor:
    """(B, 3, F, H, W) → (B, 1, F, H, W) on the video's device."""
    if depth_model is None:
        raise TFT2VError("condition 'depth' needs depth_model= (a DepthEstimator, a TorchScript path, or 'luminance')")
    if isinstance(depth_model, str) and depth_model == "luminance":
        return luminance(video)
    if not isinstance(depth_model, DepthEstimator):
        # A path (CLI / web UI): loaded once and kept, so it is ours to move. A DepthEstimator belongs
        # to the caller, who moves it once; it raises if it sits elsewhere.
        depth_model = cached_depth_model(depth_model)
        if depth_model.device not in (None, video.device):
            depth_model.to(video.device)
    return depth_model(video)


def _motion(video: torch.Tensor, motion_vectors: torch.Tensor | None) -> torch.Tensor:
    if motion_vectors is None:
        return estimate_motion(video)
    b, _, f, h, w = video.shape
    if tuple(motion_vectors.shape) != (b, 2, f, h, w):
        raise TFT2VError(f"motion_vectors must be {(b, 2, f, h, w)} for this video, got {tuple(motion_vectors.shape)}")
    return motion_vectors.to(video.device, torch.float32)


def _check_video(video: torch.Tensor) -> None:
    if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[1] != 3:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise TFT2VError(f"video must be a (B, 3, F, H, W) tensor in [-1, 1], got {shape}")
