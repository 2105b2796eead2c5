"""Does a generated shapes-world clip follow the clip its condition came from? (compositional synthesis)

A generated clip sampled with a motion or sketch condition extracted from a ground-truth clip is scored
against that clip's known motion and centroid track (``tft2v.data.toy.ToySet.truth``). Clips are
``(3, F, H, W)`` in [-1, 1] and are first analysed by :func:`tft2v.metrics.toy.analyse_clip`.

* **follows**: the clip moves (``moving``: present in ≥ 75 % of frames, ≥ 0.25 px/frame) and its detected
  direction is the condition's. A still, empty or vanishing clip does not follow, nor does one moving
  another way; chance is 1 in 4 directions.
* **track error**: mean distance in px between the detected centroid and the condition clip's centroid
  over the frames where the object is detected (``None`` for an absent clip).
* **on track**: present and track error ≤ :data:`TRACK_TOLERANCE`; an absent clip is off track.
"""

from __future__ import annotations

import numpy as np

from tft2v.errors import TFT2VError

# Half the smallest object's size (6 px): a clip within it overlaps the condition's object in every frame.
TRACK_TOLERANCE = 3.0


def follow_condition(analysis: dict, motion: str, track) -> dict:
    """``analysis`` (from analyse_clip) + the condition clip's ``motion`` and ``track`` (F, 2) as (x, y)
    → ``{condition_motion, follows, track_error, on_track}``."""
    truth = np.asarray(track, dtype=np.float64)
    detected = analysis["track"]
    if truth.shape != (len(detected), 2):
        raise TFT2VError(f"the condition track must be ({len(detected)}, 2) for this clip, got {truth.shape}")
    seen = [t for t, c in enumerate(detected) if c is not None]
    error = None
    if analysis["present"] and seen:
        error = float(np.linalg.norm(np.array([detected[t] for t in seen]) - truth[seen], axis=1).mean())
    return {"condition_motion": motion,
            "follows": bool(analysis["moving"] and analysis["direction"] == motion),
            "track_error": error,
            "on_track": error is not None and error <= TRACK_TOLERANCE}


def summarise_following(scored: list[dict]) -> dict:
    """Fractions over clips scored by :func:`follow_condition` (absent clips count as not following)."""
    n = len(scored)
    errors = [c["track_error"] for c in scored if c["track_error"] is not None]
    return {"num_clips": n,
            "follow_accuracy": sum(c["follows"] for c in scored) / n if n else None,
            "on_track_fraction": sum(c["on_track"] for c in scored) / n if n else None,
            "track_error": float(np.mean(errors)) if errors else None}
