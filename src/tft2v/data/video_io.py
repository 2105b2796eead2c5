"""Video clip reading with PyAV: sample ``num_frames`` at a target fps by seeking, not decoding everything.

Layout: this module is the I/O edge and returns uint8 ``(F, H, W, C)`` arrays; sources turn them into
float ``(C, F, H, W)`` tensors in [-1, 1] (a batch is ``(B, C, F, H, W)``).

Sampling rule (all in seconds, so variable-frame-rate files work):
* the step between sampled frames is ``1 / min(fps, real_fps)``: we never sample faster than the stream
  provides, so a 1 fps file gives 16 distinct frames over 16 s rather than repeated frames;
* the clip starts at a uniformly random time (from the caller's generator) and each slot takes the
  decoded frame whose timestamp is nearest to it;
* **too-short rule**: a video shorter than the clip span is sampled with a *lower stride* — the slots are
  spread evenly over the whole video — as long as it has at least ``num_frames`` frames; a video with
  fewer frames is rejected with ``ClipTooShortError`` (sources count it as ``too_short``). No looping or
  padding, so every clip shows real, strictly increasing frames.
Seeking goes to the keyframe before the clip start and decodes forward only until the last slot is
filled; pixel conversion (with swscale resizing) runs only for the frames kept. When container metadata
is wrong (duration longer than the real stream), an exact two-pass path reads the real timestamps.
Display rotation (phone videos) and non-square pixels are applied. A wall-clock deadline guards decoding.
"""

from __future__ import annotations

import io
import math
import os
import time
from dataclasses import dataclass
from typing import BinaryIO

import av
from av.video.reformatter import VideoReformatter
import numpy as np

from tft2v.data.image_io import center_crop, cover_size

VideoSource = str | os.PathLike | bytes | BinaryIO

# Demuxers that mean "this is a still image", i.e. a wrong-type file inside a video data set.
_IMAGE_FORMATS = {"image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "gif_pipe",
                  "j2k_pipe", "pgm_pipe", "ppm_pipe", "qoi_pipe"}


class ClipTooShortError(ValueError):
    """The video has fewer frames than the clip needs."""


class NotAVideoError(ValueError):
    """The file opens but holds no video stream (audio only, a still image, ...)."""


class DecodeTimeoutError(TimeoutError):
    """Decoding ran past its wall-clock budget."""


@dataclass(frozen=True)
class VideoInfo:
    """What the container claims: timing in seconds, coded size, codec, pixel aspect ratio."""

    fps: float
    start: float
    duration: float | None
    num_frames: int
    width: int
    height: int
    codec: str
    pixel_aspect: float


def open_video(src: VideoSource, timeout_s: float = 30.0) -> av.container.InputContainer:
    """Open a path, URL, bytes or file object; socket/read timeout applies to network sources."""
    if isinstance(src, (bytes, bytearray)):
        src = io.BytesIO(src)
    elif not hasattr(src, "read"):
        src = os.fspath(src)
    try:
        return av.open(src, mode="r", timeout=timeout_s)
    except av.error.ExitError as exc:  # PyAV's interrupt callback fired: the open itself took too long
        raise DecodeTimeoutError(f"opening took longer than {timeout_s} s") from exc


def probe(container: av.container.InputContainer) -> VideoInfo:
    """Read stream metadata (no decoding). Raises NotAVideoError when there is no video stream."""
    if not container.streams.video or container.format.name in _IMAGE_FORMATS:
        raise NotAVideoError(f"no video stream (container format {container.format.name!r})")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    tb = stream.time_base
    start = float(stream.start_time * tb) if stream.start_time is not None else 0.0
    if stream.duration:
        duration = float(stream.duration * tb)
    elif container.duration:
        duration = container.duration / av.time_base
    else:
        duration = None
    num_frames = stream.frames or (round(duration * fps) if duration and fps else 0)
    sar = stream.sample_aspect_ratio
    return VideoInfo(fps=fps, start=start, duration=duration, num_frames=int(num_frames),
                     width=stream.codec_context.width, height=stream.codec_context.height,
                     codec=stream.codec_context.name,
                     pixel_aspect=float(sar) if sar else 1.0)


def plan_times(start: float, duration: float, real_fps: float, num_frames: int, fps: float,
               rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Slot times (seconds) for a clip and the fps actually used (see the module's sampling rule).

    ``duration`` covers the whole stream, so the last frame starts at ``start + duration - 1/real_fps``.
    """
    last = start + max(0.0, duration - 1.0 / real_fps)
    step = 1.0 / min(fps, real_fps)
    span = (num_frames - 1) * step
    if span > last - start + 1e-9:
        if round(duration * real_fps) < num_frames:
            raise ClipTooShortError(
                f"video has ~{round(duration * real_fps)} frames, the clip needs {num_frames}")
        step = (last - start) / max(num_frames - 1, 1)  # lower stride: spread slots over the video
        t0 = start
    else:
        t0 = start + rng.uniform(0.0, last - start - span)
    return t0 + step * np.arange(num_frames), (1.0 / step if step > 0 else real_fps)


def display_geometry(coded_hw: tuple[int, int], rotation: int, pixel_aspect: float,
                     size: tuple[int, int] | None) -> tuple[int, tuple[int, int]]:
    """How read_clip maps a coded frame to its output: (quarter turns CCW, resize target (h, w)).

    The resize target is in the coded orientation (swscale resizes before the display rotation) and
    covers ``size`` once rotated (or is the display size when ``size`` is None); non-square pixels
    (``pixel_aspect`` = SAR) stretch the width. ``to_display`` then rotates and center-crops.
    """
    quarter = round(rotation / 90) % 4
    coded_w = coded_hw[1] * pixel_aspect  # display width before rotation
    disp_hw = (coded_hw[0], coded_w) if quarter % 2 == 0 else (coded_w, coded_hw[0])
    if size is None:
        out_hw = (round(disp_hw[0]), round(disp_hw[1]))
    else:
        out_hw = cover_size((round(disp_hw[0]), round(disp_hw[1])), size)
    return quarter, (out_hw if quarter % 2 == 0 else (out_hw[1], out_hw[0]))


def to_display(arr: np.ndarray, quarter: int, size: tuple[int, int] | None) -> np.ndarray:
    """Rotate ``(..., H, W, C)`` by ``quarter`` turns CCW (np.rot90), then center-crop to ``size``."""
    if quarter:
        arr = np.rot90(arr, k=quarter, axes=(-3, -2))
    return center_crop(arr, size) if size is not None else arr


class _FrameConverter:
    """Turns decoded frames into uint8 ``(H, W, 3)`` with rotation, pixel aspect and resize + crop."""

    def __init__(self, size: tuple[int, int] | None, pixel_aspect: float):
        self.size = size
        self.pixel_aspect = pixel_aspect
        self.rotation = 0  # of the last converted frame (display matrix, degrees CCW)
        # A scaler of its own on one thread. PyAV 18.1.1's frame.to_ndarray reuses one scaler per thread:
        # a DataLoader worker forked after the parent had scaled frames inherits it with FFmpeg slice
        # threads that do not exist in the child, and resetting it joins them forever. Workers are the
        # parallelism here.
        self._scaler = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        self.rotation = int(frame.rotation or 0)
        quarter, coded_hw = display_geometry((frame.height, frame.width), self.rotation,
                                             self.pixel_aspect, self.size)
        rgb = self._scaler.reformat(frame, format="rgb24", width=coded_hw[1], height=coded_hw[0],
                                    interpolation="BILINEAR", threads=1).to_ndarray()
        return np.ascontiguousarray(to_display(rgb, quarter, self.size))


def _nearest_fill(times: np.ndarray, decoded, convert, period: float, deadline: float):
    """Walk decoded frames in order and give each slot time the nearest frame.

    Returns (list of uint8 ``(H, W, 3)`` or None per slot, the picked frames' timestamps, number of
    slots filled). Slots up to one frame period past the last decoded frame take that frame (it is
    still on screen then).
    """
    out: list[np.ndarray | None] = [None] * len(times)
    stamps: list[float | None] = [None] * len(times)
    k, prev, prev_arr = 0, None, None
    for frame in decoded:
        if time.monotonic() > deadline:
            raise DecodeTimeoutError("decoding exceeded its time budget")
        if frame.time is None:
            continue
        t, cur_arr = frame.time, None
        while k < len(times) and times[k] < t:
            if prev is not None and times[k] - prev.time <= t - times[k]:
                prev_arr = convert(prev) if prev_arr is None else prev_arr
                out[k], stamps[k] = prev_arr, prev.time
            else:
                cur_arr = convert(frame) if cur_arr is None else cur_arr
                out[k], stamps[k] = cur_arr, t
            k += 1
        if k == len(times):
            return out, stamps, k
        prev, prev_arr = frame, cur_arr
    while prev is not None and k < len(times) and times[k] - prev.time <= period + 1e-6:
        prev_arr = convert(prev) if prev_arr is None else prev_arr
        out[k], stamps[k] = prev_arr, prev.time
        k += 1
    return out, stamps, k


def _reopen(src: VideoSource, timeout_s: float) -> av.container.InputContainer:
    if hasattr(src, "seek"):
        src.seek(0)
    return open_video(src, timeout_s)


def read_clip(src: VideoSource, num_frames: int, fps: float, size: tuple[int, int] | None = None,
              rng: np.random.Generator | None = None, timeout_s: float = 30.0) -> tuple[np.ndarray, dict]:
    """Read ``num_frames`` frames sampled at ``fps`` → (uint8 ``(F, H, W, 3)``, meta).

    ``size=(H, W)``: resize shorter side + center crop. ``rng`` picks the random start (default: start 0).
    ``meta["times"]`` are the slot times, ``meta["frame_times"]`` the exact timestamps (``frame.time``)
    of the decoded frames shown in the slots, which identify them for other readers of the same file.
    Raises ClipTooShortError, NotAVideoError, DecodeTimeoutError, or PyAV errors for damaged files.
    """
    if num_frames < 1 or fps <= 0:
        raise ValueError(f"num_frames must be >= 1 and fps > 0, got {num_frames}, {fps}")
    deadline = time.monotonic() + timeout_s
    rng = rng if rng is not None else _FirstStart()
    with open_video(src, timeout_s) as container:
        info = probe(container)
        convert = _FrameConverter(size, info.pixel_aspect)
        filled = 0
        if info.fps > 0 and info.duration:
            times, fps_used = plan_times(info.start, info.duration, info.fps, num_frames, fps, rng)
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if times[0] > info.start + 0.5 / info.fps:
                container.seek(int(times[0] / stream.time_base), stream=stream, backward=True)
            out, stamps, filled = _nearest_fill(times, container.decode(stream), convert,
                                                1.0 / info.fps, deadline)
    exact = filled < num_frames  # no usable metadata, or it promised more video than the stream holds
    if exact:
        with _reopen(src, timeout_s) as container:
            times, fps_used, period = _exact_times(container, num_frames, fps, rng, deadline)
        with _reopen(src, timeout_s) as container:
            out, stamps, filled = _nearest_fill(times, container.decode(video=0), convert, period,
                                                deadline)
        if filled < num_frames:
            raise ClipTooShortError(f"only {filled} of {num_frames} frames could be decoded")
    meta = {"fps": info.fps, "fps_used": float(fps_used), "times": [round(float(t), 4) for t in times],
            "frame_times": [float(t) for t in stamps],
            "duration": info.duration, "codec": info.codec, "orig_size": [info.height, info.width],
            "frames_in_file": info.num_frames, "rotation": convert.rotation, "exact": exact}
    return np.stack(out), meta


class _FirstStart:
    """A stand-in generator that always draws the low end: clips start at the beginning."""

    def uniform(self, low: float, high: float) -> float:
        return low


def _exact_times(container, num_frames: int, fps: float, rng, deadline: float):
    """Plan slot times from the real frame timestamps (a decode pass without pixel conversion)."""
    stamps = []
    for frame in container.decode(video=0):
        if time.monotonic() > deadline:
            raise DecodeTimeoutError("decoding exceeded its time budget")
        if frame.time is not None:
            stamps.append(frame.time)
    if len(stamps) < num_frames:
        raise ClipTooShortError(f"video has {len(stamps)} frames, the clip needs {num_frames}")
    period = (stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1) or 1.0
    times, fps_used = plan_times(stamps[0], stamps[-1] - stamps[0] + period, 1.0 / period,
                                 num_frames, fps, rng)
    return times, fps_used, period
