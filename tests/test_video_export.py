"""export_video: mp4 decodes back with PyAV (frame count, size, content), gif, PNG folder, layouts."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from PIL import Image

from tft2v import export_video
from tft2v.errors import TFT2VError
from tft2v.video_export import to_uint8_frames


def _clip(f=6, h=32, w=48) -> np.ndarray:
    """uint8 (F, H, W, 3): frame i is flat gray 30 + 30·i (flat areas survive lossy codecs)."""
    return np.stack([np.full((h, w, 3), 30 + 30 * i, np.uint8) for i in range(f)])


def _decode(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)])


def test_mp4_plays_back_with_frame_count_size_and_content(tmp_path):
    clip = _clip()
    out = export_video(clip, tmp_path / "v.mp4", fps=8)
    assert out == tmp_path / "v.mp4"
    frames = _decode(out)
    assert frames.shape == clip.shape
    assert np.abs(frames.astype(int) - clip.astype(int)).mean(axis=(1, 2, 3)).max() < 4
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name in ("h264", "mpeg4")
        assert float(stream.average_rate) == pytest.approx(8)


def test_mp4_pads_odd_sizes(tmp_path):
    frames = _decode(export_video(_clip(3, 15, 21), tmp_path / "odd.mp4"))
    assert frames.shape == (3, 16, 22, 3)


def test_gif_and_png_folder(tmp_path):
    clip = _clip(4, 16, 16)
    gif = export_video(clip, tmp_path / "v.gif", fps=4)
    with Image.open(gif) as im:
        assert im.n_frames == 4 and im.size == (16, 16)
        assert im.info["duration"] == 250
    folder = export_video(clip, tmp_path / "frames", fps=4)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["0000.png", "0001.png", "0002.png", "0003.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(folder / "0002.png")), clip[2])


def test_tensor_layouts_match_uint8():
    clip = _clip(4, 8, 8)  # F != 3: with F = 3 the two tensor layouts are ambiguous ((3, F, …) wins)
    t = torch.from_numpy(clip).float() / 127.5 - 1  # (F, H, W, 3) in [-1, 1]
    np.testing.assert_array_equal(to_uint8_frames(t.permute(3, 0, 1, 2)), clip)  # (3, F, H, W)
    np.testing.assert_array_equal(to_uint8_frames(t.permute(0, 3, 1, 2)), clip)  # (F, 3, H, W)
    np.testing.assert_array_equal(to_uint8_frames(clip.astype(np.float32) / 255), clip)


@pytest.mark.parametrize(
    "frames, path, message",
    [
        (np.zeros((2, 8, 8), np.uint8), "a.mp4", "(F, H, W, 3)"),
        (np.zeros((0, 8, 8, 3), np.uint8), "a.mp4", "0 frames"),
        (np.zeros((2, 8, 8, 3), np.int32), "a.mp4", "dtype"),
        (torch.zeros(4, 2, 8, 8), "a.mp4", "(3, F, H, W)"),
        (np.zeros((2, 8, 8, 3), np.uint8), "a.avi", ".mp4 or .gif"),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path, frames, path, message):
    with pytest.raises(TFT2VError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        export_video(frames, tmp_path / path)


def test_bad_fps(tmp_path):
    with pytest.raises(TFT2VError, match="fps"):
        export_video(_clip(2), tmp_path / "a.mp4", fps=0)
