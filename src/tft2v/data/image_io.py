"""Image reading at the I/O edge: any PIL-readable file → uint8 ``(H, W, 3)``, resized + center-cropped.

Layout: this module returns uint8 ``(H, W, C)`` arrays (the I/O edge); sources turn them into float
``(C, F, H, W)`` tensors with F = 1. Odd but valid inputs are normalised here: EXIF orientation,
grayscale, palette, RGBA / LA (alpha composited on white), 16-bit and 32-bit integer, float and CMYK.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

ImageSource = str | os.PathLike | bytes | BinaryIO

# Magic numbers of video containers: a video under an image extension is a wrong-type file, not a
# corrupt one, and the distinction matters when a user fixes their dataset.
_VIDEO_MAGIC = ((4, b"ftyp"), (0, b"\x1a\x45\xdf\xa3"), (0, b"RIFF"), (0, b"\x00\x00\x01\xba"))


class NotAnImageError(ValueError):
    """The bytes are a recognisable non-image (e.g. a video) rather than a damaged image."""


def looks_like_video(head: bytes) -> bool:
    """True if ``head`` (the first bytes of a file) starts like an mp4/mov, webm/mkv, avi or mpeg-ps."""
    if head[:4] == b"RIFF":
        return head[8:12] == b"AVI "
    return any(head[off : off + len(magic)] == magic for off, magic in _VIDEO_MAGIC)


def _open(src: ImageSource) -> Image.Image:
    if isinstance(src, (bytes, bytearray)):
        data = bytes(src)
    elif hasattr(src, "read"):
        data = src.read()
    else:
        with open(src, "rb") as f:
            data = f.read()
    if looks_like_video(data[:16]):
        raise NotAnImageError("file holds a video container, not an image")
    img = Image.open(io.BytesIO(data))
    img.load()  # force full decode now so truncated files fail here, not later
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, scaling high bit depths instead of clipping them."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img).astype(np.float64)
        # 16-bit data is scaled to 8 bits; 'F' images in [0, 1] are scaled up, otherwise kept as 0..255.
        if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0
        elif mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA")  # palette transparency becomes a real alpha channel
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def cover_size(src_hw: tuple[int, int], size_hw: tuple[int, int]) -> tuple[int, int]:
    """Smallest (h, w) with the aspect ratio of ``src_hw`` that covers ``size_hw`` (resize shorter side)."""
    (sh, sw), (th, tw) = src_hw, size_hw
    scale = max(th / sh, tw / sw)
    return max(th, round(sh * scale)), max(tw, round(sw * scale))


def center_crop(arr: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Center-crop the two axes before the last of ``(..., H, W, C)`` to ``size_hw``."""
    th, tw = size_hw
    h, w = arr.shape[-3], arr.shape[-2]
    top, left = (h - th) // 2, (w - tw) // 2
    return arr[..., top : top + th, left : left + tw, :]


def read_image(src: ImageSource, size: tuple[int, int] | None = None) -> tuple[np.ndarray, dict]:
    """Read an image → (uint8 ``(H, W, 3)``, meta). With ``size=(H, W)``: resize shorter side + center crop.

    Raises NotAnImageError for video files, and PIL / OSError exceptions for unreadable or corrupt data.
    """
    img = _open(src)
    meta = {"orig_size": [img.height, img.width], "mode": img.mode}
    img = _to_rgb(ImageOps.exif_transpose(img))
    if size is not None:
        h, w = cover_size((img.height, img.width), size)
        if (h, w) != (img.height, img.width):
            img = img.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=3.0)
        return np.ascontiguousarray(center_crop(np.array(img), size)), meta
    return np.array(img), meta
