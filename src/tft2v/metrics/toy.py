"""Shapes-world analytic evaluators (SPEC §3): detect colour, shape and centroid track per clip.

A clip is ``(3, F, H, W)`` in ``[-1, 1]`` (a batch ``(B, 3, F, H, W)``); uint8 ``(F, H, W, C)`` exists
only at the file I/O edge. Works for any frame size and length. Definitions (all in pixels/frames):

* **object** in a frame: brightness ``v`` = max over RGB, background level ``bg`` = median of ``v``,
  ``peak`` = max of ``v``; the candidate is the largest 8-connected component of
  ``v > (bg + peak) / 2`` (half-maximum, which stays on the true edge under blur). It is an object
  only when it stands out as one — otherwise the frame is **empty** and nothing is guessed:

  - contrast ``peak - bg ≥ min_contrast`` and ≥ ``min_pixels`` pixels;
  - signal to noise, on ``v`` blurred by one pixel (pixel noise averages away, an object does not):
    (median on it − median around it) ≥ ``min_snr`` × the background's robust spread (1.4826 × MAD
    outside the grown component, at least one grey level);
  - one object: the component holds ≥ ``min_dominance`` of all above-threshold pixels;
  - colourful: the saturation ``(max − min) / max`` of its median RGB is ≥ ``min_saturation``.

* **colour**: the component's median RGB, scaled to unit max channel (so dim or blurred objects keep
  their hue), nearest palette colour (``shapes_spec.COLOURS``, scaled the same way).
* **shape**: fill ratio = soft area / soft bounding-box area, where the coverage
  ``clip((v - bg) / (level - bg), 0, 1)`` (``level`` = 90th percentile of ``v`` on the component)
  is summed around the component and the box sides sum the per-column / per-row maximum coverage
  (circle ≈ π/4, square ≈ 1). Triangles are told by **skewness** instead (blur inflates their fill):
  the larger of the standardised third moments of the coverage along x and y, ≈ 0.57 for a
  triangle and 0 for symmetric shapes.
* **present** (per clip): the object is found in ≥ half the frames (``presence`` = the fraction).
  Colour, shape, track statistics and motion are read only from present clips; an absent clip has
  colour/shape/direction ``None``, which scores as wrong against any prompt.
* **track**: coverage-weighted centroid ``(x, y)`` per frame (``None`` where absent).
* **direction**: with ``net`` = last minus first present centroid over ``span`` frames, the clip moves
  when ``|net| ≥ min_speed · span`` (0.25 px/frame default, i.e. ≥ 3.75 px over 16 frames); the
  direction is the ``MOTION_VECTORS`` entry with the largest dot product with ``net``; else ``None``.
* **moving**: present in ≥ 75% of frames and moves.
* **coherent** motion: moving, ≥ 75% of per-frame steps agree with the direction (positive dot
  product), and straightness ``|net| / path length ≥ 0.5``.
* **smoothness** (track roughness): mean ``|c[t+1] - 2 c[t] + c[t-1]|`` over consecutive present
  frames (lower = smoother). A still object is perfectly smooth, so comparisons of models use
  ``moving_smoothness``, the mean over moving clips only.
* **object consistency**: per consecutive frame pair, ``1 - mean |x[t+1] - shift(x[t], Δc)|`` over the
  object's pixels (both frames' components, grown by one pixel), where ``shift`` moves frame ``t`` by
  the object's own centroid step ``Δc`` (bilinear) — how well the object keeps its appearance while
  it moves; a pair where either frame has no object scores 0. Mean over all pairs of a present clip.
  Unlike pixel consistency, a static clip does not win it by standing still (it is judged only on
  **moving** clips) and a vanishing object loses it.
* **pixel consistency**: ``1 - mean |x[t+1] - x[t]|`` with pixels in ``[0, 1]`` (1 = static clip; kept
  for reference, a frozen or empty clip maximises it).
* **direction alignment** (prompts naming a motion): cosine between ``net`` and the prompted direction
  when the clip moves, else 0 — a graded version of direction accuracy (chance level 0), so small
  evaluation sets still resolve a difference between models.

* **extra colours / motions** (``extra_colours={name: rgb}``, ``extra_motions={name: (dx, dy)}`` on
  :func:`analyse_clip`, :func:`score_clip`, :func:`evaluate_toy`; e.g. a LoRA demo's "orange" and
  "diagonal"): added to the spec's palette / directions, a direction being the largest cosine with the
  unit vectors (for the spec's four, the same as the largest dot product). Prompts are parsed with the
  extra words too. Without them every number is the spec-only one.

Measurements behind the thresholds: ``benchmarks/RESULTS.md`` ("Shapes-world detector": noise batteries,
ground-truth accuracy) and ``docs/research/detector.md`` (the features, thresholds and faint-object tests).
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
_EIGHT = np.ones((3, 3), dtype=bool)
_SPEC_PALETTE = (_NAMES, _PALETTE_HUE)
_SPEC_MOTIONS = (spec.MOTIONS, np.array([spec.MOTION_VECTORS[m] for m in spec.MOTIONS], dtype=np.float64))


def _palette(extra_colours: dict | None) -> tuple[tuple[str, ...], np.ndarray]:
    """(names, (C, 3) unit-max-channel hues): the spec's palette plus ``extra_colours``."""
    if not extra_colours:
        return _SPEC_PALETTE
    from tft2v.data.toy import check_colours

    colours = {**spec.COLOURS, **check_colours(extra_colours)}
    rgb = np.array(list(colours.values()), dtype=np.float64)
    return tuple(colours), rgb / rgb.max(axis=1, keepdims=True)


def _directions(extra_motions: dict | None) -> tuple[tuple[str, ...], np.ndarray]:
    """(names, (M, 2) unit vectors): the spec's motions plus ``extra_motions``."""
    if not extra_motions:
        return _SPEC_MOTIONS
    from tft2v.data.toy import check_motions

    motions = {**spec.MOTION_VECTORS, **check_motions(extra_motions)}
    vectors = np.array(list(motions.values()), dtype=np.float64)
    return tuple(motions), vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

# Fill thresholds sit halfway between the generator's measured fills (square 1.00, circle 0.79, triangle 0.57).
_SQUARE_MIN_FILL = 0.89
_CIRCLE_MIN_FILL = 0.68
# Triangles skew ≥ 0.17 even under a σ = 0.8 px blur; circles and squares stay ≤ 0.11.
_TRIANGLE_MIN_SKEW = 0.14

# A palette object is ≥ 0.86 brighter than the brightest background; a quarter of that finds faded ones.
MIN_CONTRAST = 0.25
# A third of the smallest object's half-maximum area (a 6 px triangle, ≈ 18 px).
MIN_PIXELS = 6
# Signal to noise is measured on v blurred by 1 px: it averages pixel noise away, which objects (≥ 6 px) survive.
SNR_SMOOTHING = 1.0
# Faint objects under σ = 0.1 pixel noise stand ≥ 16 spreads out (half contrast: ≥ 9 in 95 % of frames); noise ≤ 6.
MIN_SNR = 8.0
# One object per clip: noise scatters its above-threshold pixels over many components.
MIN_DOMINANCE = 0.5
# Palette colours have saturation ≥ 0.78 (≥ 0.73 blurred into the background); grey noise has ~0.
MIN_SATURATION = 0.4
# A clip shows an object when it is found in at least half the frames; otherwise nothing is guessed.
MIN_PRESENCE = 0.5
# Moving and coherent clips must keep the object in view for most of the clip.
MOVING_MIN_PRESENCE = 0.75
# Coherent: most per-frame steps go the clip's way and the path is not a zig-zag.
COHERENT_MIN_AGREEMENT = 0.75
COHERENT_MIN_STRAIGHTNESS = 0.5


def _as_numpy_clip(clip) -> np.ndarray:
    """(3, F, H, W) in [-1, 1] (tensor or array) → float64 (F, H, W, 3) in [0, 1]."""
    # numpy, not torch, for the conversion: torch's thread pool costs more than the copy on a busy CPU.
    x = np.asarray(clip.detach().cpu().numpy() if isinstance(clip, torch.Tensor) else clip, np.float64)
    if x.ndim != 4 or x.shape[0] != 3:
        raise TFT2VError(f"a clip must be (3, F, H, W), got {tuple(x.shape)}")
    return np.clip((np.moveaxis(x, 0, -1) + 1.0) / 2.0, 0.0, 1.0)


def _find(frame: np.ndarray, min_contrast: float, min_pixels: int, min_snr: float, min_dominance: float,
          min_saturation: float) -> tuple[np.ndarray, np.ndarray, float] | None:
    """The object's component mask, median RGB and background level in one frame, or None (empty)."""
    v = frame.max(axis=-1)  # (H, W)
    bg, peak = float(np.median(v)), float(v.max())
    if peak - bg < min_contrast:
        return None
    labels, n = ndimage.label(v > (bg + peak) / 2, structure=_EIGHT)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]  # component sizes, label 1..n
    if sizes.max() < min_pixels or sizes.max() < min_dominance * sizes.sum():
        return None
    comp = labels == (int(sizes.argmax()) + 1)
    around = ~ndimage.binary_dilation(comp, structure=_EIGHT, iterations=2)
    if not around.any():
        return None
    smooth = ndimage.gaussian_filter(v, SNR_SMOOTHING, mode="nearest")
    rest = smooth[around]
    spread = max(1.4826 * float(np.median(np.abs(rest - np.median(rest)))), 1 / 255)
    if float(np.median(smooth[comp])) - float(np.median(rest)) < min_snr * spread:
        return None
    rgb = np.median(frame[comp], axis=0)
    if (rgb.max() - rgb.min()) < min_saturation * max(float(rgb.max()), 1e-6):
        return None
    return comp, rgb, bg


def _describe(frame: np.ndarray, comp: np.ndarray, rgb: np.ndarray, bg: float, palette=_SPEC_PALETTE) -> dict:
    v = frame.max(axis=-1)
    hue = rgb / max(rgb.max(), 1e-6)
    names, hues = palette
    colour = names[int(np.argmin(((hues - hue) ** 2).sum(axis=1)))]
    level = float(np.percentile(v[comp], 90))
    coverage = np.clip((v - bg) / max(level - bg, 1e-6), 0.0, 1.0)
    # Soft area over the component grown by one pixel: catches the blurred rim, not other blobs.
    coverage = coverage * ndimage.binary_dilation(comp, structure=_EIGHT)
    # Summed per-column / per-row maxima measure the extent with sub-pixel precision.
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
    return {"colour": colour, "shape": shape, "fill": fill, "skew": skew, "centroid": tuple(centroid),
            "area": float(total)}


_DEFAULTS = {"min_contrast": MIN_CONTRAST, "min_pixels": MIN_PIXELS, "min_snr": MIN_SNR,
             "min_dominance": MIN_DOMINANCE, "min_saturation": MIN_SATURATION}


def _detect(frame: np.ndarray, palette=_SPEC_PALETTE, **thresholds) -> tuple[dict, np.ndarray] | None:
    """(description, component mask) of the frame's object, or None; ``thresholds`` override the defaults."""
    found = _find(frame, **{**_DEFAULTS, **thresholds})
    if found is None:
        return None
    comp, rgb, bg = found
    return _describe(frame, comp, rgb, bg, palette), comp


def detect_object(frame: np.ndarray, min_contrast: float = MIN_CONTRAST, min_pixels: int = MIN_PIXELS,
                  min_snr: float = MIN_SNR, min_dominance: float = MIN_DOMINANCE,
                  min_saturation: float = MIN_SATURATION, extra_colours: dict | None = None) -> dict | None:
    """One frame float (H, W, 3) in [0, 1] → ``{colour, shape, fill, skew, centroid (x, y), area}``, or
    None when the frame shows no object (see the module docstring for what counts as one)."""
    found = _detect(frame, _palette(extra_colours), min_contrast=min_contrast, min_pixels=min_pixels,
                    min_snr=min_snr, min_dominance=min_dominance, min_saturation=min_saturation)
    return None if found is None else found[0]


def _majority(values: list[str]) -> str | None:
    return Counter(values).most_common(1)[0][0] if values else None


def _pair_consistency(a: np.ndarray, b: np.ndarray, mask_a: np.ndarray, mask_b: np.ndarray, step) -> float:
    """1 − mean |b − a shifted by ``step`` (x, y)| over both objects' pixels grown by one."""
    dy, dx = float(step[1]), float(step[0])
    moved = ndimage.shift(a, (dy, dx, 0.0), order=1, mode="nearest")
    moved_mask = ndimage.shift(mask_a.astype(np.float64), (dy, dx), order=1, mode="constant") > 0.5
    region = ndimage.binary_dilation(moved_mask | mask_b, structure=_EIGHT)
    return float(1.0 - np.abs(b[region] - moved[region]).mean())


def analyse_clip(clip, min_speed: float = 0.25, min_contrast: float = MIN_CONTRAST, extra_colours: dict | None = None,
                 extra_motions: dict | None = None) -> dict:
    """One clip (3, F, H, W) in [-1, 1] → per-clip detections and motion statistics (JSON-ready).
    ``extra_colours`` / ``extra_motions``: palette colours and directions beside the spec's."""
    x = _as_numpy_clip(clip)  # (F, H, W, 3)
    num_frames = x.shape[0]
    palette = _palette(extra_colours)
    found = [_detect(frame, palette, min_contrast=min_contrast) for frame in x]
    dets = [f[0] if f is not None else None for f in found]
    seen = [t for t, d in enumerate(dets) if d is not None]
    presence = len(seen) / num_frames
    present = presence >= MIN_PRESENCE
    track = [list(d["centroid"]) if d is not None else None for d in dets]
    out = {
        "present": present,
        "presence": presence,
        "colour": _majority([dets[t]["colour"] for t in seen]) if present else None,
        "shape": _majority([dets[t]["shape"] for t in seen]) if present else None,
        "fill": float(np.median([dets[t]["fill"] for t in seen])) if present else None,
        "skew": float(np.median([dets[t]["skew"] for t in seen])) if present else None,
        "track": track,
        "direction": None,
        "displacement": None,
        "step_agreement": None,
        "straightness": None,
        "moving": False,
        "coherent": False,
        "smoothness": None,
        "object_consistency": None,
        "pixel_consistency": float(1.0 - np.abs(np.diff(x, axis=0)).mean()) if num_frames > 1 else None,
    }
    if not present or len(seen) < 2:
        return out
    pairs = [_pair_consistency(x[t], x[t + 1], found[t][1], found[t + 1][1],
                               np.subtract(dets[t + 1]["centroid"], dets[t]["centroid"]))
             if dets[t] is not None and dets[t + 1] is not None else 0.0 for t in range(num_frames - 1)]
    out["object_consistency"] = float(np.mean(pairs))
    c = np.array([track[t] for t in seen])  # (P, 2)
    gaps = np.diff(seen)[:, None]  # frames between consecutive detections
    steps = np.diff(c, axis=0) / gaps  # (P-1, 2) px/frame
    net = c[-1] - c[0]
    span = seen[-1] - seen[0]
    path = float((np.linalg.norm(steps, axis=1) * gaps[:, 0]).sum())
    out["displacement"] = net.round(4).tolist()
    out["straightness"] = float(np.linalg.norm(net) / path) if path > 0 else 0.0
    if np.linalg.norm(net) >= min_speed * span:
        names, vectors = _directions(extra_motions)  # unit vectors: largest dot product = largest cosine
        best = int(np.argmax(vectors @ net))
        out["direction"] = names[best]
        out["step_agreement"] = float((steps @ vectors[best] > 0).mean())
        out["moving"] = bool(presence >= MOVING_MIN_PRESENCE)
        out["coherent"] = bool(out["moving"] and out["step_agreement"] >= COHERENT_MIN_AGREEMENT
                               and out["straightness"] >= COHERENT_MIN_STRAIGHTNESS)
    consecutive = [i for i in range(1, len(seen) - 1) if seen[i + 1] - seen[i - 1] == 2]
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
        "present_fraction": _mean([c["present"] for c in clips]),
        "moving_fraction": _mean([c["moving"] for c in clips]),
        "coherent_fraction": _mean([c["coherent"] for c in clips]),
        "right_and_coherent": _mean([c["right_and_coherent"] for c in clips]),
        "presence": _mean([c["presence"] for c in clips]),
        "smoothness": _mean([c["smoothness"] for c in clips]),
        "moving_smoothness": _mean([c["smoothness"] for c in clips if c["moving"]]),
        "moving_consistency": _mean([c["object_consistency"] for c in clips if c["moving"]]),
        "pixel_consistency": _mean([c["pixel_consistency"] for c in clips]),
    }


def parse_prompt(prompt: str | None, extra_colours: dict | None = None,
                 extra_motions: dict | None = None) -> tuple[str | None, str | None, str | None]:
    """(colour, shape, motion) a prompt names, knowing the extra colour / motion words too."""
    if not prompt:
        return None, None, None
    return spec.parse_caption(prompt, _palette(extra_colours)[0], _directions(extra_motions)[0])


def score_clip(analysis: dict, prompt: str | None, extra_colours: dict | None = None,
               extra_motions: dict | None = None) -> dict:
    """Adds the prompt's parse and ``*_correct`` flags (None when the prompt does not name that part).
    An absent object names nothing, so it is wrong on every part the prompt names. ``extra_*``: as for
    :func:`analyse_clip` (give the same)."""
    colour, shape, motion = parse_prompt(prompt, extra_colours, extra_motions)
    alignment = None
    if motion is not None:
        alignment = 0.0
        if analysis["direction"] is not None:
            names, vectors = _directions(extra_motions)
            net, want = np.asarray(analysis["displacement"]), vectors[names.index(motion)]
            alignment = float(net @ want / (np.linalg.norm(net) * np.linalg.norm(want)))
    colour_ok = None if colour is None else analysis["colour"] == colour
    shape_ok = None if shape is None else analysis["shape"] == shape
    return {
        **analysis,
        "prompt": prompt,
        "expected": {"colour": colour, "shape": shape, "motion": motion},
        "colour_correct": colour_ok,
        "shape_correct": shape_ok,
        "direction_correct": None if motion is None else analysis["direction"] == motion,
        "direction_alignment": alignment,
        # The held-out claim's test: appearance from images composed with motion from videos.
        "right_and_coherent": None if colour is None or shape is None else bool(
            colour_ok and shape_ok and analysis["coherent"]),
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


def evaluate_toy(videos, prompts: list[str | None] | None = None, extra_colours: dict | None = None,
                 extra_motions: dict | None = None, **kwargs) -> dict:
    """Videos (B, 3, F, H, W) in [-1, 1] (or an iterable of (3, F, H, W) clips) + prompts → summary
    with ``clips`` (per-clip results). ``kwargs`` go to :func:`analyse_clip`; ``extra_*`` to it and to
    :func:`score_clip`."""
    clips = list(videos)
    if prompts is not None and len(prompts) != len(clips):
        raise TFT2VError(f"got {len(prompts)} prompts for {len(clips)} clips")
    extra = {"extra_colours": extra_colours, "extra_motions": extra_motions}
    scored = [score_clip(analyse_clip(c, **kwargs, **extra), prompts[i] if prompts else None, **extra)
              for i, c in enumerate(clips)]
    return {**summarise(scored), "clips": scored}
