"""Write generated frames to a video file: ``.mp4`` (PyAV), ``.gif`` (PIL) or a folder of PNGs.

Layout: tensors inside tft2v are ``(B, C, F, H, W)``; this module is the I/O edge and takes ONE clip,
either uint8 ``(F, H, W, 3)`` numpy (the pipeline's ``output_type="uint8"``), float ``(F, H, W, 3)``
numpy in [0, 1] (``output_type="np"``), or a float tensor ``(3, F, H, W)`` / ``(F, 3, H, W)`` in [-1, 1]
(``(3, F, …)`` wins when both dimensions are 3).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from tft2v.errors import TFT2VError

VIDEO_SUFFIXES = (".mp4", ".gif")


def to_uint8_frames(frames) -> np.ndarray:
    """Normalise any accepted clip layout (see module docstring) to uint8 ``(F, H, W, 3)``."""
    if hasattr(frames, "detach"):  # a torch tensor in [-1, 1]
        import torch

        t = frames.detach().float().cpu()
        if t.ndim == 5 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 4 or 3 not in (t.shape[0], t.shape[1]):
            raise TFT2VError(f"a video tensor must be (3, F, H, W) or (F, 3, H, W) in [-1, 1], got {tuple(t.shape)}")
        # (3, F, H, W) is the package layout; (F, 3, H, W) is what per-frame decoders give.
        t = t.permute(1, 2, 3, 0) if t.shape[0] == 3 else t.permute(0, 2, 3, 1)  # -> (F, H, W, 3)
        return ((t.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    arr = np.asarray(frames)
    if arr.ndim == 5 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise TFT2VError(f"frames must be (F, H, W, 3), got shape {arr.shape}")
    if arr.shape[0] < 1:
        raise TFT2VError("cannot export a video with 0 frames")
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        return (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)
    raise TFT2VError(f"frames must be uint8 or float in [0, 1], got dtype {arr.dtype}")


def _write_mp4(frames: np.ndarray, path: Path, fps: int) -> None:
    import av

    # yuv420p needs even sizes: pad by repeating the last row/column instead of cropping content away.
    f, h, w, _ = frames.shape
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = w + pad_w, h + pad_h
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "medium"}
        else:
            stream.bit_rate = 4_000_000
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_gif(frames: np.ndarray, path: Path, fps: int) -> None:
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    duration_ms = max(1, round(1000 / fps))
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0, optimize=False)


def _write_pngs(frames: np.ndarray, directory: Path) -> None:
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    digits = max(4, len(str(len(frames) - 1)))
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(directory / f"{i:0{digits}d}.png")


def export_video(frames, path: str | Path, fps: float = 8) -> Path:
    """Write one clip to ``path`` and return it.

    ``path`` ending in ``.mp4`` → H.264 (libx264, yuv420p; mpeg4 if x264 is missing) via PyAV, odd
    sizes padded by one edge pixel; ``.gif`` → looping GIF via PIL; anything without a suffix (or an
    existing directory) → numbered PNGs ``0000.png, 0001.png, …`` in that directory.
    """
    path = Path(path)
    if not fps or fps <= 0:
        raise TFT2VError(f"fps must be > 0, got {fps}")
    clip = to_uint8_frames(frames)
    suffix = path.suffix.lower()
    if path.is_dir() or suffix == "":
        _write_pngs(clip, path)
        return path
    if suffix not in VIDEO_SUFFIXES:
        raise TFT2VError(f"cannot write {path.name}: use a .mp4 or .gif file, or a directory for PNG frames")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".mp4":
        _write_mp4(clip, path, fps)
    else:
        _write_gif(clip, path, fps)
    return path
