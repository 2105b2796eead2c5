"""Motion conditions: block-matching flow direction/magnitude and codec motion vectors via PyAV."""

import av
import numpy as np
import pytest
import torch

from tft2v.data.conditions_motion import estimate_motion, read_codec_motion_vectors, resize_motion
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


def write(path, frames, codec, pix_fmt, options):
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.options = options
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
