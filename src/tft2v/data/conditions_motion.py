"""Motion-vector conditions: from the codec (PyAV side data) when a file carries them, else a
block-matching flow estimate on decoded frames.

Convention (both paths): a motion field is ``(2, F, H, W)`` (``(B, 2, F, H, W)`` batched) holding the
forward displacement ``(dx, dy)`` in pixels of the content at each pixel from frame ``t-1`` to frame
``t`` (x rightwards, y downwards); frame 0 and intra-coded frames are zero. VGen's training used
``motion-vector-extractor`` (MPEG-4/H.264 block vectors, 2 channels); the codec path here reads the
same kind of block vectors through FFmpeg's ``+export_mvs``. Codec fields come out in
``read_clip``'s geometry (rotation, pixel aspect, resize + center crop, vectors in output pixels);
``read_clip_with_motion`` reads a clip (uint8 ``(F, H, W, C)``, the I/O edge) and its aligned field.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tft2v.data.video_io import NotAVideoError, display_geometry, open_video, probe, read_clip, to_display
from tft2v.errors import TFT2VError


def read_codec_motion_vectors(path: Path | str, frame_indices: list[int] | None = None,
                              size: tuple[int, int] | None = None,
                              frame_times: list[float] | None = None) -> torch.Tensor | None:
    """Dense forward motion from the codec's block vectors, ``(2, F, H, W)`` float32, or ``None`` when
    none of the decoded frames carries motion vectors (intra-only codecs such as ffv1, MJPEG, PNG, or
    codecs FFmpeg exports no vectors for).

    Frames are picked by ``frame_indices`` (non-decreasing positions in decode output order) or by
    ``frame_times`` (exact ``frame.time`` stamps, e.g. ``read_clip``'s ``meta["frame_times"]``);
    neither picks every frame. The field of a picked frame is the sum of the per-frame fields since the
    previously picked one, so strided clips get their full displacement (a repeated frame gets zero).
    Vectors referencing a future frame (B-frames) are negated; references further back than one frame
    are treated as one frame back: exact for single-reference P-frame streams (x264 ``bf=0 refs=1``),
    while with B-frames or several references (x264's defaults) some blocks span 2-4 frames and come
    out that many times too long (FFmpeg exports only the direction of a reference, not its distance).

    The field has ``read_clip``'s geometry for the same ``size``: display rotation, non-square pixels
    and resize (shorter side) + center crop to ``size=(H, W)`` (``None``: display size), with the
    vectors scaled and rotated alongside so they stay in output pixels.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise TFT2VError(f"video file {path} not found")
    if frame_indices is not None and frame_times is not None:
        raise TFT2VError("give frame_indices or frame_times, not both")
    picks = _pick_counts(frame_indices, frame_times)
    wanted = None if picks is None else sum(picks.values())
    fields: list[torch.Tensor] = []  # one (2, H', W') per clip slot
    acc, found, index = None, False, -1
    try:
        with open_video(path) as container:
            pixel_aspect = probe(container).pixel_aspect
            stream = container.streams.video[0]
            stream.codec_context.options = {"flags2": "+export_mvs"}
            for index, frame in enumerate(container.decode(stream)):
                if acc is None:
                    acc = np.zeros((2, frame.height, frame.width), dtype=np.float32)
                mvs = frame.side_data.get("MOTION_VECTORS")
                if mvs is not None and len(mvs):
                    found = True
                    if fields:  # motion before the first picked frame belongs to no slot
                        acc += _paint_blocks(acc.shape, mvs.to_ndarray())
                key = frame.time if frame_times is not None else index
                repeats = 1 if picks is None else picks.get(key, 0)
                for _ in range(repeats):
                    fields.append(_clip_geometry(acc, int(frame.rotation or 0), pixel_aspect, size))
                    acc[:] = 0  # the next slot's field counts from this frame on
                if len(fields) == wanted:
                    break
    except (av.error.FFmpegError, NotAVideoError, IndexError) as e:
        raise TFT2VError(f"cannot read motion vectors from {path}: {e}") from None
    if wanted is not None and len(fields) < wanted:
        what = f"frame_indices within [0, {index + 1})" if frame_indices is not None else "frame_times"
        raise TFT2VError(f"not all picked frames were decoded from {path} (want {what})")
    if not found:
        return None
    return torch.stack(fields, dim=1)  # (2, F, H', W')


def read_clip_with_motion(path: Path | str, num_frames: int, fps: float, size: tuple[int, int] | None = None,
                          rng: np.random.Generator | None = None,
                          timeout_s: float = 30.0) -> tuple[np.ndarray, dict, torch.Tensor | None]:
    """``read_clip`` plus the codec motion of the very frames it shows → (uint8 ``(F, H, W, 3)``, meta,
    ``(2, F, H, W)`` float32 or ``None``), the field aligned pixel for pixel with the clip.

    read_clip's own errors (ClipTooShortError, NotAVideoError, ...) pass through unchanged.
    """
    clip, meta = read_clip(path, num_frames, fps, size=size, rng=rng, timeout_s=timeout_s)
    return clip, meta, read_codec_motion_vectors(path, size=size, frame_times=meta["frame_times"])


def _pick_counts(frame_indices: list[int] | None, frame_times: list[float] | None) -> dict | None:
    """How many clip slots each picked frame fills, keyed by index or time; None picks every frame."""
    by_index = frame_indices is not None
    name, picks = ("frame_indices", frame_indices) if by_index else ("frame_times", frame_times)
    if picks is None:
        return None
    keys = np.asarray(picks, dtype=np.float64)
    bad_index = by_index and bool(keys.min(initial=0) < 0 or np.any(keys != np.round(keys)))
    if len(keys) == 0 or np.any(np.diff(keys) < 0) or bad_index:
        raise TFT2VError(f"{name} must be a non-empty non-decreasing list (indices: integers >= 0), "
                         f"got {list(picks)}")
    return dict(Counter(picks))


def _clip_geometry(field: np.ndarray, rotation: int, pixel_aspect: float,
                   size: tuple[int, int] | None) -> torch.Tensor:
    """Map a coded-frame field ``(2, H, W)`` to read_clip's output geometry → ``(2, H', W')``."""
    quarter, coded_hw = display_geometry(field.shape[1:], rotation, pixel_aspect, size)
    x = torch.from_numpy(field.copy())[:, None]  # (2, 1, H, W)
    if coded_hw != tuple(field.shape[1:]):
        x = resize_motion(x, coded_hw)
    arr = to_display(x[:, 0].permute(1, 2, 0).numpy(), quarter, size)  # (H', W', 2)
    dx, dy = arr[..., 0], arr[..., 1]
    for _ in range(quarter):  # np.rot90 (CCW) sends a pixel (x, y) to (y, W-1-x): (dx, dy) → (dy, -dx)
        dx, dy = dy, -dx
    return torch.from_numpy(np.stack([dx, dy]).astype(np.float32))


def _paint_blocks(shape: tuple[int, int, int], mvs: np.ndarray) -> np.ndarray:
    """A field of ``shape`` (2, H, W) holding each block's forward displacement over its area."""
    field = np.zeros(shape, dtype=np.float32)
    scale = np.maximum(mvs["motion_scale"].astype(np.float32), 1.0)
    # motion = src - dst for the reference frame; content moves dst ← src, i.e. forward = -motion
    # for past references and +motion for future ones.
    sign = np.where(mvs["source"] < 0, -1.0, 1.0).astype(np.float32)
    dx = sign * mvs["motion_x"] / scale
    dy = sign * mvs["motion_y"] / scale
    h, w = field.shape[1:]
    x0 = np.clip(mvs["dst_x"] - mvs["w"] // 2, 0, w)
    y0 = np.clip(mvs["dst_y"] - mvs["h"] // 2, 0, h)
    x1 = np.clip(x0 + mvs["w"], 0, w)
    y1 = np.clip(y0 + mvs["h"], 0, h)
    for i in range(len(mvs)):
        field[0, y0[i] : y1[i], x0[i] : x1[i]] = dx[i]
        field[1, y0[i] : y1[i], x0[i] : x1[i]] = dy[i]
    return field


def resize_motion(motion: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a motion field ``(..., 2, F, H, W)`` to ``size = (H', W')``, scaling vectors to match."""
    lead = motion.shape[:-4]
    _, f, h, w = motion.shape[-4:]
    x = motion.reshape(-1, 2, f, h, w).permute(0, 2, 1, 3, 4).reshape(-1, 2, h, w)  # (N·F, 2, H, W)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    x = x * torch.tensor([size[1] / w, size[0] / h], dtype=x.dtype, device=x.device).view(1, 2, 1, 1)
    x = x.reshape(-1, f, 2, *size).permute(0, 2, 1, 3, 4)  # (N, 2, F, H', W')
    return x.reshape(*lead, 2, f, *size)


def estimate_motion(video: torch.Tensor, radius: int = 3, window: int = 5, max_side: int = 64) -> torch.Tensor:
    """Block-matching flow on a video batch ``(B, 3, F, H, W)`` in [-1, 1] → ``(B, 2, F, H, W)``.

    For every pixel, the integer shift within ``±radius`` minimising the ``window``-box-filtered
    absolute RGB difference between frame t and the shifted frame t-1 is chosen (ties go to the
    smallest shift, so flat areas get zero motion), then refined to sub-pixel accuracy by a parabola
    through the neighbouring costs. Frames larger than ``max_side`` are matched at a reduced size and
    the vectors scaled back, so the search range covers proportionally larger motions.
    """
    if video.ndim != 5 or video.shape[1] != 3:
        raise TFT2VError(f"video must be (B, 3, F, H, W), got {tuple(video.shape)}")
    b, _, f, h, w = video.shape
    out = torch.zeros(b, 2, f, h, w, dtype=torch.float32, device=video.device)
    if f < 2:
        return out
    scale = max(h, w) / max_side
    frames = video.float().permute(0, 2, 1, 3, 4).reshape(b * f, 3, h, w)  # (B·F, 3, H, W)
    if scale > 1:
        small = (max(1, round(h / scale)), max(1, round(w / scale)))
        frames = F.interpolate(frames, size=small, mode="area")
    sh, sw = frames.shape[-2:]
    frames = frames.reshape(b, f, 3, sh, sw)
    prev = frames[:, :-1].reshape(-1, 3, sh, sw)  # (B·(F-1), 3, h, w)
    cur = frames[:, 1:].reshape(-1, 3, sh, sw)
    flow = _block_match(prev, cur, radius, window)  # (B·(F-1), 2, h, w)
    flow = flow.reshape(b, f - 1, 2, sh, sw).permute(0, 2, 1, 3, 4)  # (B, 2, F-1, h, w)
    if (sh, sw) != (h, w):
        flow = resize_motion(flow, (h, w))
    out[:, :, 1:] = flow
    return out


def _block_match(prev: torch.Tensor, cur: torch.Tensor, radius: int, window: int) -> torch.Tensor:
    """Per-pixel forward displacement ``cur(x) ≈ prev(x - d)``: (N, 3, H, W) pairs → (N, 2, H, W)."""
    n, _, h, w = cur.shape
    side = 2 * radius + 1
    padded = F.pad(prev, (radius,) * 4, mode="replicate")
    shifts = torch.arange(-radius, radius + 1, device=cur.device)
    # All shifted views in one tensor, then one difference: a few large ops instead of 3·side² small ones,
    # whose thread-pool hand-offs dominate on a busy CPU.
    moved = torch.stack([padded[:, :, radius - dy : radius - dy + h, radius - dx : radius - dx + w]
                         for dy in range(-radius, radius + 1)  # host ints: no device→host copy of `shifts`
                         for dx in range(-radius, radius + 1)], dim=1)  # (N, side², 3, H, W)
    cost = (cur.unsqueeze(1) - moved).abs().sum(dim=2)  # (N, side², H, W), index = (dy + r)·side + (dx + r)
    cost = F.avg_pool2d(cost, window, stride=1, padding=window // 2, count_include_pad=False)
    dyy, dxx = torch.meshgrid(shifts, shifts, indexing="ij")
    length = (dxx.abs() + dyy.abs()).flatten().to(cost.dtype)  # (side²,)
    cost = cost + 1e-4 * length.view(1, -1, 1, 1)  # prefer the shortest shift among equal costs
    best = cost.argmin(dim=1)  # (N, H, W)
    by, bx = best // side, best % side
    flow = torch.stack([(bx - radius).float(), (by - radius).float()], dim=1)  # (N, 2, H, W)
    # Sub-pixel refinement: vertex of the parabola through the costs at offsets -1, 0, +1 per axis.
    for axis, (pos, stride) in enumerate([(bx, 1), (by, side)]):
        inner = (pos > 0) & (pos < side - 1)
        lo = torch.gather(cost, 1, (best - stride * inner).unsqueeze(1)).squeeze(1)
        mid = torch.gather(cost, 1, best.unsqueeze(1)).squeeze(1)
        hi = torch.gather(cost, 1, (best + stride * inner).unsqueeze(1)).squeeze(1)
        curv = lo - 2 * mid + hi
        # Only a true dip (both neighbours clearly costlier) has a meaningful vertex; a cost flat on
        # one side (e.g. background next to a moving edge) would otherwise get a spurious ±0.5.
        dip = inner & (lo - mid > 1e-3) & (hi - mid > 1e-3)
        offset = torch.where(dip, 0.5 * (lo - hi) / curv.clamp_min(1e-6), torch.zeros_like(mid))
        flow[:, axis] += offset.clamp(-0.5, 0.5)
    return flow
