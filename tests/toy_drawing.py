"""Hand-drawn shapes-world clips for the evaluator and quickstart tests."""

import numpy as np
import torch

from tft2v.data import shapes_spec as spec

BACKGROUND = 12.0  # the flat dark background level of drawn clips (uint8 scale)


def draw(shape: str, colour: str, centres, size: float = 9, hw: int = 32) -> torch.Tensor:
    """Object per frame at centres [(x, y), ...] on a dark background → (3, F, H, W) in [-1, 1].

    Anti-aliased by 4×4 supersampling, like the shapes world renders (a hard-edged 9 px circle is
    an almost-square blob that no detector could tell from a square)."""
    ss = 4
    ys, xs = (np.indices((hw * ss, hw * ss)) + 0.5) / ss  # sub-pixel sample positions
    frames = []
    for cx, cy in centres:
        dx, dy, h = xs - cx, ys - cy, size / 2
        if shape == "circle":
            inside = dx * dx + dy * dy <= h * h
        elif shape == "square":
            inside = (abs(dx) <= h) & (abs(dy) <= h)
        else:  # apex up, base at the bottom, base = height = size
            inside = (dy <= h) & (2 * dx - dy <= h) & (-2 * dx - dy <= h)
        alpha = inside.reshape(hw, ss, hw, ss).mean(axis=(1, 3))[..., None]  # (H, W, 1) coverage
        frames.append(BACKGROUND * (1 - alpha) + np.array(spec.COLOURS[colour], dtype=np.float64) * alpha)
    x = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2).float()  # (3, F, H, W)
    return x / 127.5 - 1
