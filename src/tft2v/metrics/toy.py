"""Shapes-world analytic evaluators (SPEC §3): detect colour, shape and centroid track per clip.

A clip is ``(3, F, H, W)`` in ``[-1, 1]`` (a batch ``(B, 3, F, H, W)``); uint8 ``(F, H, W, C)`` exists
only at the file I/O edge. Works for any frame size and length. Definitions (all in pixels/frames):

* **object** in a frame: brightness ``v`` = max over RGB. Background level ``bg`` = median of ``v``,
  ``peak`` = max of ``v``. An object is present when ``peak - bg ≥ min_contrast`` and the largest
  8-connected component of ``v > (bg + peak) / 2`` (half-maximum, which stays on the true edge under
  blur) has ≥ ``min_pixels`` pixels.
* **colour**: the component's median RGB, scaled to unit max channel (so dim or blurred objects keep
  their hue), nearest palette colour (``shapes_spec.COLOURS``, scaled the same way).
* **shape**: fill ratio = soft area / bounding-box area, where soft area sums the coverage
  ``clip((v - bg) / (level - bg), 0, 1)`` (``level`` = 90th percentile of ``v`` on the component)
  around the component, and the box sides sum the per-column / per-row maximum coverage (circle
  ≈ π/4, square ≈ 1). Blur conserves summed coverage, which keeps the ratio robust. Triangles are
  told by **skewness** instead (blur inflates their fill): the larger of the standardised third
  moments of the coverage along x and y, ≈ 0.57 for a triangle and 0 for symmetric shapes.
* **track**: coverage-weighted centroid ``(x, y)`` per frame (``None`` where absent).
* **direction**: with ``net`` = last minus first present centroid over ``span`` frames, the clip moves
  when ``|net| ≥ min_speed · span`` (0.25 px/frame default, i.e. ≥ 3.75 px over 16 frames); the
  direction is the ``MOTION_VECTORS`` entry with the largest dot product with ``net``; else ``None``.
* **coherent** motion: present in ≥ 75% of frames, moving, ≥ 75% of per-frame steps agree with the
  direction (positive dot product), and straightness ``|net| / path length ≥ 0.5``.
* **smoothness**: mean ``|c[t+1] - 2 c[t] + c[t-1]|`` over consecutive present frames (lower = smoother).
* **pixel consistency**: ``1 - mean |x[t+1] - x[t]|`` with pixels in ``[0, 1]`` (1 = static clip).
* **direction alignment** (prompts naming a motion): cosine between ``net`` and the prompted direction
  when the clip moves, else 0 — a graded version of direction accuracy (chance level 0), so small
  evaluation sets still resolve a difference between models.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import torch
from scipy import ndimage

from tft2v.data import shapes_spec as spec
from tft2v.errors import TFT2VError

_NAMES = tuple(spec.COLOURS)
_PALETTE = np.array([spec.COLOURS[c] for c in _NAMES], dtype=np.float64)
_PALETTE_HUE = _PALETTE / _PALETTE.max(axis=1, keepdims=True)  # (6, 3) unit max channel
# Measured fills on the generator's clips: square ≈ 1.00, circle ≈ 0.79 (π/4), triangle ≈ 0.57 (not
# 1/2: the thin apex rows shorten the soft height). Thresholds sit halfway between neighbours.
_SQUARE_MIN_FILL = 0.89
_CIRCLE_MIN_FILL = 0.68
# Skewness (below) measures ≈ 0.58 on sharp triangles and ≥ 0.17 under a σ = 0.8 px blur, while
# circles and squares, aliased or blurred, stay ≤ 0.11.
_TRIANGLE_MIN_SKEW = 0.14
_EIGHT = np.ones((3, 3), dtype=bool)


def _as_numpy_clip(clip) -> np.ndarray:
    """(3, F, H, W) in [-1, 1] (tensor or array) → float64 (F, H, W, 3) in [0, 1]."""
    x = clip.detach().cpu().double().numpy() if isinstance(clip, torch.Tensor) else np.asarray(clip, np.float64)
    if x.ndim != 4 or x.shape[0] != 3:
        raise TFT2VError(f"a clip must be (3, F, H, W), got {tuple(x.shape)}")
    return np.clip((np.moveaxis(x, 0, -1) + 1.0) / 2.0, 0.0, 1.0)


def detect_object(frame: np.ndarray, min_contrast: float = 0.25, min_pixels: int = 3) -> dict | None:
    """One frame float (H, W, 3) in [0, 1] → ``{colour, shape, fill, skew, centroid (x, y), area}`` or None."""
    v = frame.max(axis=-1)  # (H, W)
    bg, peak = float(np.median(v)), float(v.max())
    if peak - bg < min_contrast:
        return None
    labels, n = ndimage.label(v > (bg + peak) / 2, structure=_EIGHT)
    sizes = np.bincount(labels.ravel())[1:]  # component sizes, label 1..n
    if n == 0 or sizes.max() < min_pixels:
        return None
    comp = labels == (int(sizes.argmax()) + 1)
    rgb = np.median(frame[comp], axis=0)
    hue = rgb / max(rgb.max(), 1e-6)
    colour = _NAMES[int(np.argmin(((_PALETTE_HUE - hue) ** 2).sum(axis=1)))]

    level = float(np.percentile(v[comp], 90))
    coverage = np.clip((v - bg) / max(level - bg, 1e-6), 0.0, 1.0)
    # Soft area over the component grown by one pixel: catches the blurred rim, not other blobs.
    coverage = coverage * ndimage.binary_dilation(comp, structure=_EIGHT)
    # Soft bounding box: summed per-column / per-row maximum coverage measures the extent with
    # sub-pixel precision (an integer box is off by up to a pixel, ±30% of a 6 px object's area).
    col_max, row_max = coverage.max(axis=0), coverage.max(axis=1)  # (W,), (H,)
    total = coverage.sum()
    fill = float(total / max(col_max.sum() * row_max.sum(), 1e-6))
    centroid, skews = [], []
    for profile in (coverage.sum(axis=0), coverage.sum(axis=1)):  # mass along x, then along y
        pos = np.arange(len(profile)) + 0.5  # pixel centres
        mean = float((profile * pos).sum() / total)
        var = (profile * (pos - mean) ** 2).sum() / total
        centroid.append(mean)
        skews.append(abs((profile * (pos - mean) ** 3).sum() / total) / max(var, 1e-6) ** 1.5)
    # A triangle's mass along its axis is a triangular distribution with skewness 2√2/5 ≈ 0.57;
    # circles and squares are symmetric (0), and a symmetric blur only dilutes the skewness.
    skew = float(max(skews))
    if skew >= _TRIANGLE_MIN_SKEW or fill < _CIRCLE_MIN_FILL:
        shape = "triangle"
    else:
        shape = "square" if fill >= _SQUARE_MIN_FILL else "circle"
    return {"colour": colour, "shape": shape, "fill": fill, "skew": skew, "centroid": tuple(centroid), "area": float(total)}


def _majority(values: list[str]) -> str | None:
    return Counter(values).most_common(1)[0][0] if values else None


def analyse_clip(clip, min_speed: float = 0.25, min_contrast: float = 0.25) -> dict:
    """One clip (3, F, H, W) in [-1, 1] → per-clip detections and motion statistics (JSON-ready)."""
    x = _as_numpy_clip(clip)  # (F, H, W, 3)
    num_frames = x.shape[0]
    dets = [detect_object(frame, min_contrast) for frame in x]
    present = [t for t, d in enumerate(dets) if d is not None]
    track = [list(d["centroid"]) if d is not None else None for d in dets]
    out = {
        "colour": _majority([dets[t]["colour"] for t in present]),
        "shape": _majority([dets[t]["shape"] for t in present]),
        "fill": float(np.median([dets[t]["fill"] for t in present])) if present else None,
        "skew": float(np.median([dets[t]["skew"] for t in present])) if present else None,
        "presence": len(present) / num_frames,
        "track": track,
        "direction": None,
        "displacement": None,
        "step_agreement": None,
        "straightness": None,
        "coherent": False,
        "smoothness": None,
        "pixel_consistency": float(1.0 - np.abs(np.diff(x, axis=0)).mean()) if num_frames > 1 else None,
    }
    if len(present) < 2:
        return out
    c = np.array([track[t] for t in present])  # (P, 2)
    gaps = np.diff(present)[:, None]  # frames between consecutive detections
    steps = np.diff(c, axis=0) / gaps  # (P-1, 2) px/frame
    net = c[-1] - c[0]
    span = present[-1] - present[0]
    path = float((np.linalg.norm(steps, axis=1) * gaps[:, 0]).sum())
    out["displacement"] = net.round(4).tolist()
    out["straightness"] = float(np.linalg.norm(net) / path) if path > 0 else 0.0
    if np.linalg.norm(net) >= min_speed * span:
        vectors = np.array([spec.MOTION_VECTORS[m] for m in spec.MOTIONS], dtype=np.float64)
        best = int(np.argmax(vectors @ net))
        out["direction"] = spec.MOTIONS[best]
        out["step_agreement"] = float((steps @ vectors[best] > 0).mean())
        out["coherent"] = bool(
            out["presence"] >= 0.75 and out["step_agreement"] >= 0.75 and out["straightness"] >= 0.5
        )
    consecutive = [i for i in range(1, len(present) - 1) if present[i + 1] - present[i - 1] == 2]
    if consecutive:
        second = np.array([c[i + 1] - 2 * c[i] + c[i - 1] for i in consecutive])
        out["smoothness"] = float(np.linalg.norm(second, axis=1).mean())
    return out


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _score(clips: list[dict]) -> dict:
    """Aggregate per-clip results (each carrying its ``expected`` parse and correctness flags)."""
    return {
        "num_clips": len(clips),
        "colour_accuracy": _mean([c["colour_correct"] for c in clips]),
        "shape_accuracy": _mean([c["shape_correct"] for c in clips]),
        "direction_accuracy": _mean([c["direction_correct"] for c in clips]),
        "direction_alignment": _mean([c["direction_alignment"] for c in clips]),
        "num_direction_prompts": sum(c["direction_correct"] is not None for c in clips),
        "coherent_fraction": _mean([c["coherent"] for c in clips]),
        "presence": _mean([c["presence"] for c in clips]),
        "smoothness": _mean([c["smoothness"] for c in clips]),
        "pixel_consistency": _mean([c["pixel_consistency"] for c in clips]),
    }


def score_clip(analysis: dict, prompt: str | None) -> dict:
    """Adds the prompt's parse and ``*_correct`` flags (None when the prompt does not name that part)."""
    colour, shape, motion = spec.parse_caption(prompt) if prompt else (None, None, None)
    alignment = None
    if motion is not None:
        alignment = 0.0
        if analysis["direction"] is not None:
            net, want = np.asarray(analysis["displacement"]), np.asarray(spec.MOTION_VECTORS[motion], np.float64)
            alignment = float(net @ want / (np.linalg.norm(net) * np.linalg.norm(want)))
    return {
        **analysis,
        "prompt": prompt,
        "expected": {"colour": colour, "shape": shape, "motion": motion},
        "colour_correct": None if colour is None else analysis["colour"] == colour,
        "shape_correct": None if shape is None else analysis["shape"] == shape,
        "direction_correct": None if motion is None else analysis["direction"] == motion,
        "direction_alignment": alignment,
    }


def summarise(scored: list[dict]) -> dict:
    """Aggregate scored clips: overall, seen vs held-out combos, and per colour×shape combo."""
    held = set(spec.HELD_OUT)
    combos: dict[str, list[dict]] = defaultdict(list)
    for c in scored:
        e = c["expected"]
        if e["colour"] and e["shape"]:
            combos[f"{e['colour']} {e['shape']}"].append(c)
    per_combo = {
        name: {**_score(group), "held_out": tuple(name.split()) in held} for name, group in sorted(combos.items())
    }
    return {
        **_score(scored),
        "seen": _score([c for g in combos.values() for c in g if tuple(c["expected"].values())[:2] not in held]),
        "held_out": _score([c for g in combos.values() for c in g if tuple(c["expected"].values())[:2] in held]),
        "per_combo": per_combo,
    }


def evaluate_toy(videos, prompts: list[str | None] | None = None, **kwargs) -> dict:
    """Videos (B, 3, F, H, W) in [-1, 1] (or an iterable of (3, F, H, W) clips) + prompts → summary
    with ``clips`` (per-clip results). ``kwargs`` go to :func:`analyse_clip`."""
    clips = list(videos)
    if prompts is not None and len(prompts) != len(clips):
        raise TFT2VError(f"got {len(prompts)} prompts for {len(clips)} clips")
    scored = [score_clip(analyse_clip(c, **kwargs), prompts[i] if prompts else None) for i, c in enumerate(clips)]
    return {**summarise(scored), "clips": scored}
