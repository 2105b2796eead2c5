"""The input preprocessing the FID and FVD feature networks were defined with (TensorFlow 1 graphs).

Frames enter as ``(N, 3, H, W)`` floats in ``[-1, 1]`` (``u / 127.5 - 1`` of uint8 pixels ``u``).

* FID (InceptionV3, TF graph ``2015-12-05``): pixels ``u`` in [0, 255] are resized to 299×299 with
  TF1's ``tf.image.resize_bilinear`` (``align_corners=False``, legacy: no half-pixel offset), then mapped
  to ``(u - 128) / 128`` (range [-1, 0.9921875]).
* FVD (I3D, TF-Hub ``i3d-kinetics-400``, google-research ``frechet_video_distance``): every frame is
  resized to 224×224 with the same TF1 bilinear resize (no crop: the aspect ratio is squashed), then
  mapped to ``2 u / 255 - 1`` (exactly this package's [-1, 1] convention); clips of 16 frames.

The legacy TF resize samples source coordinate ``i · in / out`` for output pixel ``i`` (not
``(i + ½) · in / out - ½`` as ``torch.nn.functional.interpolate(align_corners=False)`` and TF2 do), so a
2× downscale keeps pixels 0, 2, 4, … instead of averaging pairs; the last row/column is clamped. Bilinear
resizing commutes with affine value maps, so the order of resize and value mapping does not matter.
"""

from __future__ import annotations

import torch

FID_SIZE = 299
I3D_SIZE = 224
I3D_FRAMES = 16  # the FVD convention (FVD16): 16 consecutive frames per clip

FID_PREPROCESS = ("frames resized to 299x299 with TF1 resize_bilinear (align_corners=False, no half-pixel "
                  "offset) on 0..255 pixel values, then (u - 128) / 128")
I3D_PREPROCESS = ("frames resized to 224x224 (no crop) with TF1 resize_bilinear (align_corners=False, no "
                  "half-pixel offset), values 2u/255 - 1 in [-1, 1]; 16-frame clips")


def _axis_weights(n_in: int, n_out: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lower index, upper index and upper weight for TF1's legacy bilinear resize along one axis."""
    # float32 like TF's kernel: scale = in / out, source coordinate = i * scale.
    scale = torch.tensor(n_in / n_out, dtype=torch.float32, device=device)
    src = torch.arange(n_out, dtype=torch.float32, device=device) * scale
    lo = src.floor()
    frac = src - lo
    lo = lo.long().clamp(0, n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    return lo, hi, frac


def tf_resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(N, C, H, W)`` → ``(N, C, *size)`` exactly as TF1 ``tf.image.resize_bilinear(align_corners=False)``."""
    h_out, w_out = size
    n, c, h, w = x.shape
    if (h, w) == (h_out, w_out):
        return x
    x = x.float()
    lo, hi, frac = _axis_weights(h, h_out, x.device)
    top, bottom = x.index_select(2, lo), x.index_select(2, hi)
    x = top + (bottom - top) * frac.view(1, 1, -1, 1)
    lo, hi, frac = _axis_weights(w, w_out, x.device)
    left, right = x.index_select(3, lo), x.index_select(3, hi)
    return left + (right - left) * frac.view(1, 1, 1, -1)


def fid_inception_input(frames: torch.Tensor, size: int = FID_SIZE) -> torch.Tensor:
    """Frames ``(N, 3, H, W)`` in [-1, 1] → the FID InceptionV3's input ``(N, 3, size, size)``."""
    u = (frames.float() + 1.0) * 127.5  # 0..255 pixel values
    return (tf_resize_bilinear(u, (size, size)) - 128.0) / 128.0


def i3d_input(videos: torch.Tensor, size: int = I3D_SIZE) -> torch.Tensor:
    """Videos ``(B, 3, F, H, W)`` in [-1, 1] → I3D's input ``(B, 3, F, size, size)`` in [-1, 1]."""
    b, c, f, h, w = videos.shape
    x = videos.float()
    if (h, w) == (size, size):
        return x
    x = x.transpose(1, 2).reshape(b * f, c, h, w)  # (B·F, 3, H, W)
    x = tf_resize_bilinear(x, (size, size))
    return x.reshape(b, f, c, size, size).transpose(1, 2)  # (B, 3, F, S, S)
