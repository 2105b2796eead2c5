"""Shapes-world generator: determinism, held-out combos, objects in frame, captions, ground truth."""

import numpy as np
import pytest
import torch

from tft2v.data import shapes_spec as spec
from tft2v.data.toy import ToyWorld, allowed_combos, generate, to_pixels
from tft2v.errors import TFT2VError


@pytest.fixture(scope="module")
def videos():
    return generate("videos", 300, seed=7)


def test_same_seed_is_identical_and_other_seed_differs():
    a, b = generate("videos", 40, seed=3), generate("videos", 40, seed=3)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.track, b.track)
    assert not np.array_equal(a.frames, generate("videos", 40, seed=4).frames)
    # Rendering in chunks must not change the data.
    assert np.array_equal(a.frames, generate("videos", 40, seed=3, chunk=7).frames)


def test_shapes_and_sample_contract(videos):
    assert videos.frames.shape == (300, 16, 32, 32, 3) and videos.frames.dtype == np.uint8
    s = videos.sample(5)
    assert s["pixels"].shape == (3, 16, 32, 32) and s["pixels"].dtype == torch.float32
    assert -1.0 <= s["pixels"].min() and s["pixels"].max() <= 1.0
    assert torch.equal(s["cond_frame"], s["pixels"][:, 8])
    assert s["caption"] == "" and s["has_text"] is False
    img = generate("images", 3, seed=0).sample(0)
    assert img["pixels"].shape == (3, 1, 32, 32) and img["has_text"] is True
    assert torch.equal(img["cond_frame"], img["pixels"][:, 0])


def test_held_out_combos_never_in_videos_but_in_images(videos):
    held = set(spec.HELD_OUT)
    names = list(spec.COLOURS)
    for kind, data in [("videos", videos), ("captioned_videos", generate("captioned_videos", 300, seed=1))]:
        seen = {(names[c], spec.SHAPES[s]) for c, s in zip(data.colour, data.shape)}
        assert not seen & held, kind
        assert len(seen) == 18 - len(held)  # every allowed combo is used
    images = generate("images", 500, seed=2)
    seen = {(names[c], spec.SHAPES[s]) for c, s in zip(images.colour, images.shape)}
    assert held <= seen
    assert len(allowed_combos("images")) == 18


def test_objects_stay_in_frame_and_move_as_specified(videos):
    world = ToyWorld()
    assert np.all((videos.obj_size >= 6) & (videos.obj_size <= 12))
    assert np.all((videos.speed >= 1) & (videos.speed <= 2))
    for i in range(len(videos)):
        truth = videos.truth(i)
        track = np.array(truth["track"])
        step = np.diff(track, axis=0)  # (F-1, 2)
        dx, dy = spec.MOTION_VECTORS[truth["motion"]]
        np.testing.assert_allclose(step, np.tile([dx, dy], (15, 1)) * truth["speed"], atol=1e-3)
    # Object pixels (far from the dark background) never touch the frame border.
    bright = videos.frames.max(axis=-1) > 100  # (N, F, H, W)
    assert not bright[..., 0, :].any() and not bright[..., -1, :].any()
    assert not bright[..., :, 0].any() and not bright[..., :, -1].any()
    assert bright.sum(axis=(2, 3)).min() > 10  # and the object is visible in every frame
    assert world.max_speed(12) >= 1


def test_rendered_centroid_matches_analytic_track(videos):
    colours = np.array(list(spec.COLOURS.values()), dtype=np.float64)
    for i in range(0, 300, 37):
        f = videos.frames[i].astype(np.float64)  # (F, H, W, 3)
        rgb = colours[videos.colour[i]]
        # Coverage from the colour channel with the largest object/background contrast.
        ch = int(np.argmax(rgb))
        alpha = np.clip((f[..., ch] - 24) / (rgb[ch] - 24), 0, 1)  # background <= 24
        ys, xs = np.mgrid[0:32, 0:32] + 0.5
        cx = (alpha * xs).sum((1, 2)) / alpha.sum((1, 2))
        cy = (alpha * ys).sum((1, 2)) / alpha.sum((1, 2))
        np.testing.assert_allclose(np.stack([cx, cy], 1), videos.track[i], atol=0.35)


def test_colours_and_background():
    data = generate("images", 200, seed=5)
    for i in range(200):
        frame = data.frames[i, 0].reshape(-1, 3).astype(int)
        rgb = np.array(spec.COLOURS[data.truth(i)["colour"]])
        assert (np.abs(frame - rgb).max(axis=1) == 0).sum() >= 6  # solid object interior, exact colour
        dark = frame.max(axis=1) <= spec.BACKGROUND_MAX
        assert dark.mean() > 0.8  # the rest is the dark background


def test_captions_follow_grammar():
    images = generate("images", 50, seed=0)
    captioned = generate("captioned_videos", 50, seed=0)
    for i in range(50):
        t = images.truth(i)
        assert images.caption(i) == f"a {t['colour']} {t['shape']}"
        t = captioned.truth(i)
        assert captioned.caption(i) == f"a {t['colour']} {t['shape']} moving {t['motion']}"
        assert spec.parse_caption(captioned.caption(i)) == (t["colour"], t["shape"], t["motion"])
        assert captioned.sample(i)["has_text"] is True


def test_stream_is_seeded_endless_and_resumable():
    data = generate("images", 5, seed=0)
    keys = [s["key"] for _, s in zip(range(12), data.stream(seed=1))]
    assert sorted(keys[:5]) == sorted(f"images/{i:06d}" for i in range(5))  # an epoch is a permutation
    assert keys == [s["key"] for _, s in zip(range(12), data.stream(seed=1))]
    assert keys != [s["key"] for _, s in zip(range(12), data.stream(seed=2))]
    resumed = [s["key"] for _, s in zip(range(5), data.stream(seed=1).iter_from(7))]
    assert resumed == keys[7:12]


def test_to_pixels_range():
    x = to_pixels(np.array([[[[0, 255, 128]]]], dtype=np.uint8))  # (1, 1, 1, 3)
    assert x.shape == (3, 1, 1, 1)
    assert x.flatten().tolist() == pytest.approx([-1.0, 1.0, 128 / 127.5 - 1], abs=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [dict(size_range=(6, 40)), dict(frames=0), dict(speed_range=(3, 2)), dict(frames=40)],
)
def test_bad_world_is_a_clear_error(kwargs):
    with pytest.raises(TFT2VError):
        ToyWorld(**kwargs)


def test_bad_kind_or_count():
    with pytest.raises(TFT2VError, match="unknown toy set"):
        generate("audio", 3)
    with pytest.raises(TFT2VError):
        generate("images", -1)
