"""Reading a user's condition sources — a video file or one still image — for generation.

Layout: files are decoded at the I/O edge as uint8 ``(F, H, W, 3)`` / ``(H, W, 3)`` and leave as float
``(1, 3, F, H, W)`` (a still: ``(1, 3, H, W)``) in [-1, 1]: the raw video that
:class:`~tft2v.pipeline.TFT2VPipeline` turns into conditions with the training extractors. ``tft2v
generate`` and the web UI both read through here, so one file gives one condition either way; each
passes ``error`` — the start of its one-line message, in its own words (a CLI flag, an upload name).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tft2v.errors import TFT2VError


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def read_condition_video(path: str | Path, num_frames: int, fps: float, size: tuple[int, int],
                         error: str) -> torch.Tensor:
    """A video file → (1, 3, F, H, W) in [-1, 1]: ``num_frames`` frames sampled at ``fps``, resized and
    centre-cropped to ``size`` (H, W). A file that cannot be decoded raises ``"{error}: <reason>"``."""
    from tft2v.data.video_io import read_clip

    try:
        frames, _ = read_clip(str(path), num_frames, fps, size=size)  # uint8 (F, H, W, 3)
    except Exception as err:  # noqa: BLE001 - PyAV and the reader raise many types for short, damaged or non-video files
        raise TFT2VError(f"{error}: {_first_line(err)}") from None
    return torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # (1, 3, F, H, W)


def read_still(path: str | Path, size: tuple[int, int], error: str, video_first_frame: bool = False) -> torch.Tensor:
    """An image file → (1, 3, H, W) in [-1, 1], resized and centre-cropped to ``size`` (H, W). With
    ``video_first_frame`` a video file gives its first frame; otherwise it is refused like a damaged image."""
    from tft2v.data.image_io import looks_like_video, read_image
    from tft2v.data.video_io import read_clip

    try:
        with open(path, "rb") as f:
            is_video = looks_like_video(f.read(64))
        if is_video and video_first_frame:
            pixels = read_clip(str(path), 1, 1.0, size=size)[0][0]  # uint8 (H, W, 3)
        else:
            pixels = read_image(str(path), size=size)[0]  # uint8 (H, W, 3)
    except Exception as err:  # noqa: BLE001 - PIL and PyAV raise many types for damaged or wrong-type files
        raise TFT2VError(f"{error}: {_first_line(err)}") from None
    return (torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1)[None]  # (1, 3, H, W)


def hold_still(still: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(1, 3, H, W) → (1, 3, F, H, W): the image on every frame, the raw video from which the extractors
    take ``local_image`` (the first frame) or ``single_sketch`` (its sketch on every frame)."""
    return still[:, :, None].expand(-1, -1, num_frames, -1, -1)
