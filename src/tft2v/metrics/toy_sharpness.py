"""Edge sharpness of the shapes world's object: how crisp its outline is (the refinement demo's measure).

A clip is ``(3, F, H, W)`` in ``[-1, 1]``. Per frame with a detected object (:mod:`tft2v.metrics.toy`), the
outline is the band one pixel either side of the object's component boundary (the component grown by one
pixel minus the component shrunk by one), and the frame's sharpness is the mean gradient magnitude there:
``|∇I|`` of the image in [0, 1] per pixel (Sobel, divided by 8 so a unit step edge reads 0.5 per side), as the
norm over the three channels. A blurred edge spreads the same step over more pixels and reads lower.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from tft2v.metrics.toy import _EIGHT, _SPEC_PALETTE, _as_numpy_clip, _detect


def frame_sharpness(frame: np.ndarray) -> float | None:
    """Mean gradient magnitude on the object's outline in one frame (H, W, 3) in [0, 1]; None when empty."""
    found = _detect(frame, _SPEC_PALETTE)
    if found is None:
        return None
    comp = found[1]
    band = ndimage.binary_dilation(comp, structure=_EIGHT) & ~ndimage.binary_erosion(comp, structure=_EIGHT)
    gx = np.stack([ndimage.sobel(frame[..., c], axis=1) for c in range(3)], axis=-1) / 8
    gy = np.stack([ndimage.sobel(frame[..., c], axis=0) for c in range(3)], axis=-1) / 8
    magnitude = np.sqrt((gx**2 + gy**2).sum(axis=-1))
    return float(magnitude[band].mean())


def clip_sharpness(clip) -> float | None:
    """Mean :func:`frame_sharpness` over the frames of ``clip`` (3, F, H, W) that show the object; None if none."""
    values = [v for v in (frame_sharpness(f) for f in _as_numpy_clip(clip)) if v is not None]
    return float(np.mean(values)) if values else None
