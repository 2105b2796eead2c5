"""Motion conditions: block-matching flow direction/magnitude and codec motion vectors via PyAV."""

from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from tft2v.data.conditions_motion import (estimate_motion, read_clip_with_motion, read_codec_motion_vectors,
                                          resize_motion)
from tft2v.data.video_io import read_clip
from tft2v.errors import TFT2VError


def moving_square(dx: int, dy: int, frames: int = 6, size: int = 48, side: int = 10) -> np.ndarray:
    """uint8 (F, H, W, 3): a textured square moving (dx, dy) px/frame over a dark background."""
    rng = np.random.default_rng(0)
    patch = rng.integers(120, 255, (side, side, 3), dtype=np.uint8)
    out = np.full((frames, size, size, 3), 10, dtype=np.uint8)
    for t in range(frames):
        x, y = 19 + dx * (t - frames // 2), 19 + dy * (t - frames // 2)
        out[t, y : y + side, x : x + side] = patch
    return out


def as_video(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # (1, 3, F, H, W)


@pytest.mark.parametrize("dx,dy", [(2, 0), (-2, 0), (0, 1), (0, -3), (1, 1)])
def test_flow_estimate_finds_direction_and_speed(dx, dy):
    frames = moving_square(dx, dy)
    flow = estimate_motion(as_video(frames))  # (1, 2, F, H, W)
    assert flow.shape == (1, 2, 6, 48, 48)
    assert (flow[:, :, 0] == 0).all()  # frame 0 has no predecessor
    obj = torch.from_numpy(frames[1:].max(axis=-1) > 60)  # object pixels in frames 1.. (F-1, H, W)
    mean = flow[0, :, 1:][:, obj].mean(dim=1)
    assert mean.tolist() == pytest.approx([dx, dy], abs=0.35)
    # Background farther than the 5x5 matching window from the object never moves.
    touched = torch.from_numpy(frames.max(axis=(0, -1)) > 10).float()[None, None]
    background = torch.nn.functional.max_pool2d(touched, 5, stride=1, padding=2)[0, 0] == 0
    assert flow[0, :, 1:][:, :, background].abs().max() == 0


def test_flow_at_reduced_resolution_scales_vectors():
    frames = moving_square(3, 0, size=96, side=20)
    flow = estimate_motion(as_video(frames), max_side=48)  # matched at half size, vectors doubled back
    obj = torch.from_numpy(frames[1:].max(axis=-1) > 60)
    assert flow[0, 0, 1:][obj].mean().item() == pytest.approx(3, abs=0.6)


def test_flow_on_single_frame_and_bad_shape():
    assert (estimate_motion(torch.zeros(2, 3, 1, 8, 8)) == 0).all()
    with pytest.raises(TFT2VError):
        estimate_motion(torch.zeros(2, 1, 4, 8, 8))


def test_resize_motion_scales_vectors():
    mv = torch.ones(2, 2, 3, 8, 16)
    out = resize_motion(mv, (16, 8))
    assert out.shape == (2, 2, 3, 16, 8)
    assert torch.allclose(out[:, 0], torch.full_like(out[:, 0], 0.5))  # x halves
    assert torch.allclose(out[:, 1], torch.full_like(out[:, 1], 2.0))  # y doubles


def write(path, frames, codec, pix_fmt, options, rotation=None, sar=None):
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.options = options
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if sar is not None:
            stream.codec_context.sample_aspect_ratio = sar
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("codec,options", [("libx264", {"bf": "0", "crf": "12"}), ("mpeg4", {"qscale": "2"})])
def test_codec_motion_vectors_point_the_right_way(tmp_path, codec, options):
    frames = moving_square(2, 0, frames=8, size=64, side=16)
    path = tmp_path / f"sq_{codec}.mp4"
    write(path, frames, codec, "yuv420p", options)
    mv = read_codec_motion_vectors(path)
    assert mv is not None and mv.shape == (2, 8, 64, 64)
    moving = mv[0, 1:][mv[0, 1:] != 0]
    assert moving.numel() > 0 and moving.median().item() == pytest.approx(2, abs=0.5)
    assert mv[1].abs().max() < 1  # nothing moves vertically
    # Picking every second frame sums the displacement over the skipped frame.
    strided = read_codec_motion_vectors(path, frame_indices=[1, 3, 5, 7])
    assert strided.shape == (2, 4, 64, 64)
    assert torch.allclose(strided[:, 1], mv[:, 2] + mv[:, 3])
    assert (strided[:, 0] == 0).all()


def test_intra_only_stream_has_no_motion_vectors(tmp_path):
    path = tmp_path / "intra.mkv"
    write(path, moving_square(2, 0, frames=4, size=32, side=8), "ffv1", "yuv444p", {})
    assert read_codec_motion_vectors(path) is None


def test_codec_reader_errors(tmp_path):
    with pytest.raises(TFT2VError, match="not found"):
        read_codec_motion_vectors(tmp_path / "missing.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(TFT2VError, match="cannot read motion vectors"):
        read_codec_motion_vectors(bad)
    path = tmp_path / "ok.mp4"
    write(path, moving_square(1, 0, frames=4, size=32, side=8), "libx264", "yuv420p", {"bf": "0"})
    with pytest.raises(TFT2VError, match="frame_indices"):
        read_codec_motion_vectors(path, frame_indices=[2, 1])
    with pytest.raises(TFT2VError, match="frame_indices within"):
        read_codec_motion_vectors(path, frame_indices=[1, 9])
    with pytest.raises(TFT2VError, match="not both"):
        read_codec_motion_vectors(path, frame_indices=[1], frame_times=[0.125])
    with pytest.raises(TFT2VError, match="frame_times"):
        read_codec_motion_vectors(path, frame_times=[0.1])  # no frame has this timestamp


# Single-reference P-frames: each block vector then spans exactly one frame (see the reader's docstring).
P_ONLY = {"bf": "0", "refs": "1", "crf": "12"}


def sliding_patch(height: int, width: int, x0: int, step: int, frames: int = 8, side: int = 16) -> np.ndarray:
    """uint8 (F, H, W, 3): a textured patch moving ``step`` px/frame to the right, top edge at y=20."""
    patch = np.random.default_rng(0).integers(100, 255, (side, side, 3), dtype=np.uint8)
    out = np.full((frames, height, width, 3), 10, np.uint8)
    for t in range(frames):
        out[t, 20 : 20 + side, x0 + step * t : x0 + step * t + side] = patch
    return out


def motion_on_object(clip: np.ndarray, motion: torch.Tensor) -> torch.Tensor:
    """(2, N) vectors at the patch pixels read_clip shows in frames 1.. of the clip."""
    shown = torch.from_numpy(clip[1:].max(axis=-1) > 60)  # (F-1, H, W)
    return motion[:, 1:][:, shown]


@pytest.mark.parametrize("height,width,x0,rotation,sar,expected", [
    (64, 96, 20, None, None, (2, 0)),  # 4 px/frame, resize ×0.5 to 32×48, crop 8 px off each side
    (64, 128, 40, None, None, (2, 0)),  # wide: 32×64 then a 16 px crop offset
    (64, 96, 20, 90, None, (0, -2)),  # shown rotated 90° CCW: rightward coded motion points up
    (64, 48, 4, None, Fraction(2, 1), (2, 0)),  # 2 px/frame coded, pixels twice as wide: 4 display px
])
def test_codec_field_aligns_with_read_clip(tmp_path, height, width, x0, rotation, sar, expected):
    step = 4 if sar is None else 2
    path = tmp_path / "patch.mp4"
    write(path, sliding_patch(height, width, x0, step), "libx264", "yuv420p", P_ONLY, rotation, sar)
    clip, meta, motion = read_clip_with_motion(path, 8, 8, size=(32, 32))
    assert clip.shape == (8, 32, 32, 3) and motion.shape == (2, 8, 32, 32)
    assert np.array_equal(clip, read_clip(path, 8, 8, size=(32, 32))[0])
    assert (motion[:, 0] == 0).all()
    on_object = motion_on_object(clip, motion)
    # A crop offset or rotation that disagreed with read_clip would put background (zero) vectors here.
    close = (on_object - torch.tensor(expected, dtype=torch.float32)[:, None]).abs().amax(dim=0) <= 0.5
    assert on_object.shape[1] > 100 and close.float().mean() > 0.95


def test_strided_clip_and_full_display_size(tmp_path):
    path = tmp_path / "patch.mp4"
    write(path, sliding_patch(64, 48, 4, 2, frames=12), "libx264", "yuv420p", P_ONLY, sar=Fraction(2, 1))
    # 4 fps from an 8 fps file: every second frame, so each slot sums two frames' motion (2 × 2 px × 0.5).
    clip, meta, motion = read_clip_with_motion(path, 4, 4, size=(32, 32), rng=np.random.default_rng(1))
    assert np.diff(meta["frame_times"]).tolist() == [0.25] * 3
    assert motion_on_object(clip, motion).median(dim=1).values.tolist() == [4.0, 0.0]
    # size=None keeps read_clip's display size: the 2:1 pixels make the 48-wide frame 96 wide.
    clip, _, motion = read_clip_with_motion(path, 4, 8)
    assert clip.shape == (4, 64, 96, 3) and motion.shape == (2, 4, 64, 96)
    assert motion_on_object(clip, motion).median(dim=1).values.tolist() == [4.0, 0.0]
    # A frame picked twice in a row moved by nothing in between.
    twice = read_codec_motion_vectors(path, frame_indices=[2, 3, 3], size=(32, 32))
    assert twice[:, 1].abs().max() > 1 and (twice[:, 2] == 0).all()


def test_clip_without_codec_motion(tmp_path):
    path = tmp_path / "intra.mkv"
    write(path, moving_square(2, 0, frames=4, size=32, side=8), "ffv1", "yuv444p", {})
    clip, meta, motion = read_clip_with_motion(path, 4, 8, size=(16, 16))
    assert clip.shape == (4, 16, 16, 3) and len(meta["frame_times"]) == 4 and motion is None
