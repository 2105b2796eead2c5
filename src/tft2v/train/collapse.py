"""Collapse guard for distillation runs: validation clips that turn into solid colours or black frames.

Consistency distillation is known to collapse (FastVideo #1229, #1126: solid-colour or black videos). The
guard reads the validation clips ``(n, 3, F, H, W)`` in [-1, 1] and flags, per clip, the frames that are

* ``constant`` — one colour: the frame's pixel range (max − min over H, W, each channel) is near 0;
* ``black`` — after the first frame, nothing in the frame is brighter than near-black;
* ``flat`` — the frame's standard deviation over H, W (mean over channels) is near 0.

:class:`CollapseWatch` remembers the first validation step at which some clip showed a sign, so its warning
says when the collapse started; a clean validation clears it.
"""

from __future__ import annotations

import torch

# Thresholds in [0, 1] pixel units: a 1/255 rounding is 0.004, a shapes-world frame's std is > 0.05.
CONSTANT_RANGE = 0.02
BLACK_LEVEL = 0.04
FLAT_STD = 0.01


def collapse_signs(clips: torch.Tensor, constant_range: float = CONSTANT_RANGE, black_level: float = BLACK_LEVEL,
                   flat_std: float = FLAT_STD) -> list[dict[str, list[int]]]:
    """Per clip of ``clips`` (n, 3, F, H, W) in [-1, 1], the frame indices showing each sign:
    ``{"constant": [...], "black": [...], "flat": [...]}`` (empty lists: a healthy clip)."""
    if clips.ndim != 5 or clips.shape[1] != 3:
        raise ValueError(f"clips must be (n, 3, F, H, W), got shape {tuple(clips.shape)}")
    x = (clips.float().clamp(-1, 1) + 1) / 2  # (n, 3, F, H, W) in [0, 1]
    flat_pixels = x.flatten(3)  # (n, 3, F, H·W)
    spread = (flat_pixels.amax(dim=3) - flat_pixels.amin(dim=3)).amax(dim=1)  # (n, F)
    brightest = flat_pixels.amax(dim=(1, 3))  # (n, F)
    std = flat_pixels.std(dim=3, unbiased=False).mean(dim=1)  # (n, F)
    out = []
    for i in range(x.shape[0]):
        black = [f for f in range(1, x.shape[2]) if brightest[i, f] < black_level]
        out.append({"constant": [f for f in range(x.shape[2]) if spread[i, f] < constant_range],
                    "black": black, "flat": [f for f in range(x.shape[2]) if std[i, f] < flat_std]})
    return out


def _frames(indices: list[int]) -> str:
    if len(indices) == 1:
        return f"frame {indices[0]}"
    if indices == list(range(indices[0], indices[-1] + 1)):
        return f"frames {indices[0]}-{indices[-1]}"
    return "frames " + ",".join(map(str, indices))


def describe(signs: dict[str, list[int]]) -> str:
    """One clip's signs in words ('' for a healthy clip)."""
    words = {"constant": "one colour", "black": "black", "flat": "std near 0"}
    return "; ".join(f"{_frames(v)} {words[k]}" for k, v in signs.items() if v)


class CollapseWatch:
    """Tracks collapse across validations; ``since`` is the step of the first validation of the current
    collapse (None while the clips are healthy), kept in the checkpoints so a resumed run still knows it."""

    def __init__(self, since: int | None = None):
        self.since = since

    def check(self, step: int, clips: dict[str, torch.Tensor]) -> str | None:
        """``clips``: {label (e.g. "'a red circle' at 4 steps"): (1, 3, F, H, W)} of one validation. Returns
        the warning line, or None when no clip shows a sign."""
        found = []
        for label, clip in clips.items():
            text = describe(collapse_signs(clip)[0])
            if text:
                found.append(f"{label}: {text}")
        if not found:
            self.since = None
            return None
        if self.since is None:
            self.since = step
        return (f"warning: validation at step {step} looks collapsed (since step {self.since}): "
                + " | ".join(found))
