"""tft2v.condition_io: condition videos and stills read for generation (shapes, range, which frames,
one-line errors in the caller's words)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from media_fixtures import frame_index, index_frames, write_video
from PIL import Image

from tft2v.condition_io import hold_still, read_condition_video, read_still
from tft2v.errors import TFT2VError


def test_condition_video_is_sampled_cropped_and_scaled(tmp_path):
    path = write_video(tmp_path / "clip.mp4", index_frames(16), fps=8)
    video = read_condition_video(path, 4, 4.0, (32, 48), error="unused")  # every other frame at 4 fps
    assert video.shape == (1, 3, 4, 32, 48) and video.dtype == torch.float32
    assert -1 <= video.min() and video.max() <= 1
    uint8 = ((video[0] + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 3, 0).numpy()  # (F, H, W, 3)
    assert [frame_index(f) for f in uint8] == [0, 2, 4, 6]


def test_still_image_and_video_first_frame(tmp_path):
    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[:, :15] = 255
    Image.fromarray(pixels).save(tmp_path / "half.png")
    still = read_still(tmp_path / "half.png", (20, 20), error="unused")  # centre crop: 5 white columns of 20
    assert still.shape == (1, 3, 20, 20)
    assert torch.allclose(still[0, :, :, :10].mean(), torch.tensor(1.0)) and still[0, :, :, 10:].max() == -1
    clip = write_video(tmp_path / "clip.mp4", index_frames(8, 32, 32), fps=8)
    first = read_still(clip, (32, 32), error="unused", video_first_frame=True)
    assert frame_index(((first[0] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()) == 0
    with pytest.raises(TFT2VError, match=r"^cannot use clip\.mp4 as the image: file holds a video"):
        read_still(clip, (32, 32), error="cannot use clip.mp4 as the image")


def test_hold_still_repeats_the_image_over_frames():
    still = torch.randn(1, 3, 4, 5)
    held = hold_still(still, 3)
    assert held.shape == (1, 3, 3, 4, 5) and all(torch.equal(held[:, :, f], still) for f in range(3))


@pytest.mark.parametrize("content", [b"", b"not a video\nsecond line", b"\x00\x00\x01\xba" + b"\x00" * 64])
def test_unreadable_files_are_one_line_errors_with_the_callers_words(tmp_path, content):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    for read in (lambda: read_condition_video(bad, 4, 8.0, (16, 16), error="cannot read --sketch video bad.mp4"),
                 lambda: read_still(bad, (16, 16), error="cannot read --sketch video bad.mp4", video_first_frame=True)):
        with pytest.raises(TFT2VError, match=r"^cannot read --sketch video bad\.mp4: ") as err:
            read()
        assert "\n" not in str(err.value)
    with pytest.raises(TFT2VError, match="cannot use missing.png as the image: "):
        read_still(tmp_path / "missing.png", (16, 16), error="cannot use missing.png as the image")
