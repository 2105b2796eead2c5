"""Shapes-world analytic evaluators on hand-drawn clips and on the generator's ground truth."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from tft2v.data import shapes_spec as spec
from tft2v.data.toy import ToyWorld, _draw_background, generate, to_pixels
from tft2v.errors import TFT2VError
from tft2v.metrics.toy import analyse_clip, detect_object, evaluate_toy

from tests.toy_drawing import BACKGROUND, draw


def test_red_circle_moving_left():
    clip = draw("circle", "red", [(24 - t, 16) for t in range(16)])
    r = evaluate_toy([clip], ["a red circle moving left"])
    c = r["clips"][0]
    assert (c["colour"], c["shape"], c["direction"]) == ("red", "circle", "left")
    assert c["coherent"] and c["presence"] == 1.0
    assert c["displacement"][0] == pytest.approx(-15, abs=0.2)
    assert c["smoothness"] < 0.1
    assert (r["colour_accuracy"], r["shape_accuracy"], r["direction_accuracy"]) == (1.0, 1.0, 1.0)
    assert r["per_combo"]["red circle"]["held_out"] is False


@pytest.mark.parametrize("shape", spec.SHAPES)
@pytest.mark.parametrize("colour", ["green", "yellow", "cyan"])
def test_static_shapes_and_colours(shape, colour):
    clip = draw(shape, colour, [(15.3, 17.6)] * 6, size=8)
    c = analyse_clip(clip)
    assert (c["colour"], c["shape"]) == (colour, shape)
    assert c["direction"] is None and not c["coherent"]
    assert np.abs(c["displacement"]).max() < 1e-6
    assert c["pixel_consistency"] == pytest.approx(1.0)


def noise_clips(per_kind: int, seed: int = 0):
    """Clips with no object: iid noise at several levels, smooth (blurred) colour noise, grey blobs, salt."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(per_kind):
        yield torch.rand(3, 16, 32, 32, generator=g) * 2 - 1
        yield torch.randn(3, 16, 32, 32, generator=g).clamp(-1, 1)
        yield (0.5 * torch.randn(3, 16, 32, 32, generator=g)).clamp(-1, 1)
        yield (-0.6 + 0.3 * torch.randn(3, 16, 32, 32, generator=g)).clamp(-1, 1)
        b = torch.randn(3, 16, 32, 32, generator=g).numpy()
        yield torch.from_numpy(ndimage.gaussian_filter(b, (0, 0, 1, 1)) * 1.5).clamp(-1, 1)
        yield torch.from_numpy(-0.5 + ndimage.gaussian_filter(b, (0, 0, 2, 2)) * 2).clamp(-1, 1)
        yield torch.from_numpy(-1 + ndimage.gaussian_filter(b, (0, 0, 2, 2)) * 4).clamp(-1, 1)
        yield torch.from_numpy(-0.6 + np.repeat(ndimage.gaussian_filter(b[:1], (0, 0, 2, 2)), 3, 0) * 4).clamp(-1, 1)
        dots = torch.rand(1, 16, 32, 32, generator=g) < 0.02
        yield torch.where(dots, torch.rand(3, 16, 32, 32, generator=g) * 2 - 1, torch.full((3, 16, 32, 32), -0.9))


def test_noise_clips_have_no_object_and_score_as_wrong():
    clips = list(noise_clips(12))  # 108 clips, 1728 frames
    prompts = ["a red circle moving left"] * len(clips)
    r = evaluate_toy(clips, prompts)
    frame_detections = sum(t is not None for c in r["clips"] for t in c["track"])
    assert frame_detections == 0 and r["present_fraction"] == 0.0
    for c in r["clips"]:
        assert (c["colour"], c["shape"], c["direction"], c["coherent"], c["moving"]) == (None, None, None, False, False)
        assert c["smoothness"] is None and c["object_consistency"] is None
    # Absent counts as wrong, not as a guess: accuracy 0, where a guess would score chance (1/6, 1/3).
    assert (r["colour_accuracy"], r["shape_accuracy"], r["direction_accuracy"]) == (0.0, 0.0, 0.0)
    assert r["direction_alignment"] == 0.0 and r["right_and_coherent"] == 0.0


def test_empty_frames_have_no_object():
    # The shapes world's own dark textured backgrounds, without an object, and flat dark frames.
    backgrounds = np.rint(_draw_background(np.random.default_rng(0), 200, ToyWorld())) / 255  # (200, H, W, 3)
    assert sum(detect_object(b) is not None for b in backgrounds) == 0
    blank = torch.full((3, 16, 32, 32), -0.9)
    c = analyse_clip(blank)
    assert c["presence"] == 0.0 and not c["present"] and c["colour"] is None and c["track"] == [None] * 16


def test_a_clip_seen_in_under_half_its_frames_names_nothing():
    clip = draw("circle", "red", [(8 + t, 16) for t in range(16)])
    clip[:, 7:] = BACKGROUND / 127.5 - 1  # the object is in 7 of 16 frames only
    c = analyse_clip(clip)
    assert c["presence"] == pytest.approx(7 / 16) and not c["present"]
    assert c["colour"] is None and c["shape"] is None and c["direction"] is None


def test_jittery_track_is_less_smooth_and_less_consistent():
    straight = analyse_clip(draw("square", "blue", [(8 + t, 16) for t in range(16)]))
    rng = np.random.default_rng(0)
    jitter = analyse_clip(draw("square", "blue", [(8 + t, 16 + rng.uniform(-3, 3)) for t in range(16)]))
    assert jitter["smoothness"] > 5 * straight["smoothness"]
    assert jitter["pixel_consistency"] < straight["pixel_consistency"]


def test_any_frame_size():
    clip = draw("triangle", "magenta", [(20, 40 - 1.5 * t) for t in range(8)], size=14, hw=64)
    c = analyse_clip(clip)
    assert (c["shape"], c["colour"], c["direction"], c["coherent"]) == ("triangle", "magenta", "up", True)


def _prompts(data):
    out = []
    for i in range(len(data)):
        t = data.truth(i)
        out.append(spec.caption(t["colour"], t["shape"], t["motion"]))
    return out


@pytest.mark.parametrize("sigma", [0.0, 0.8])
def test_generator_ground_truth_scores_perfectly(sigma):
    videos = generate("videos", 48, seed=5)
    clips = [to_pixels(f) for f in videos.frames]
    if sigma:  # blurred like a soft generated sample
        clips = [torch.from_numpy(ndimage.gaussian_filter(c.numpy(), (0, 0, sigma, sigma))) for c in clips]
    r = evaluate_toy(clips, _prompts(videos))
    for key in ("colour_accuracy", "shape_accuracy", "direction_accuracy", "coherent_fraction", "presence",
                "present_fraction", "moving_fraction", "right_and_coherent"):
        assert r[key] == 1.0, key
    tracks = np.array([c["track"] for c in r["clips"]])
    assert np.abs(tracks - videos.track).max() < 0.3  # centroids within a third of a pixel


def test_ground_truth_under_pixel_noise_stays_detected():
    # Generated samples are noisier than the world: σ = 0.05 noise (in [0, 1] pixels) on blurred clips.
    videos = generate("videos", 100, seed=6)
    rng = np.random.default_rng(0)
    blurred = [ndimage.gaussian_filter(to_pixels(f).numpy(), (0, 0, 0.8, 0.8)) for f in videos.frames]
    r = evaluate_toy([torch.from_numpy(c + rng.normal(0, 0.1, c.shape)) for c in blurred], _prompts(videos))
    assert r["present_fraction"] == 1.0 and r["presence"] == 1.0
    assert r["colour_accuracy"] >= 0.95 and r["shape_accuracy"] >= 0.95 and r["direction_accuracy"] >= 0.95
    # Half the contrast under σ = 0.075 noise: faint but plainly visible, still found and named.
    bg = 10 / 127.5 - 1
    faint = [torch.from_numpy(bg + (c - bg) * 0.5 + rng.normal(0, 0.15, c.shape)) for c in blurred[:40]]
    r = evaluate_toy(faint, _prompts(videos)[:40])
    assert r["present_fraction"] >= 0.95 and r["colour_accuracy"] >= 0.95 and r["coherent_fraction"] >= 0.95


def test_held_out_combos_are_flagged():
    images = generate("images", 90, seed=1)
    r = evaluate_toy([to_pixels(f) for f in images.frames], _prompts(images))
    assert r["colour_accuracy"] == 1.0 and r["shape_accuracy"] == 1.0
    assert r["direction_accuracy"] is None and r["num_direction_prompts"] == 0
    flagged = {k for k, v in r["per_combo"].items() if v["held_out"]}
    assert flagged == {f"{c} {s}" for c, s in spec.HELD_OUT}
    assert r["held_out"]["num_clips"] + r["seen"]["num_clips"] == 90
    assert r["held_out"]["shape_accuracy"] == 1.0 and r["present_fraction"] == 1.0


def test_wrong_prompt_counts_as_wrong():
    clip = draw("square", "blue", [(10 + t, 16) for t in range(16)])
    c = evaluate_toy(clip[None], ["a red circle moving left"])["clips"][0]
    assert c["colour_correct"] is False and c["shape_correct"] is False and c["direction_correct"] is False


def test_direction_alignment_is_the_cosine_to_the_prompted_direction():
    diagonal = draw("circle", "red", [(8 + t, 8 + t) for t in range(16)])  # moving right and down
    still = draw("circle", "red", [(16, 16)] * 16)
    prompts = ["a red circle moving right", "a red circle moving left", "a red circle moving up", "a red circle"]
    r = evaluate_toy(torch.stack([diagonal, diagonal, diagonal, still]), prompts)
    align = [c["direction_alignment"] for c in r["clips"]]
    assert align[0] == pytest.approx(2 ** -0.5, abs=0.02) and align[1] == pytest.approx(-(2 ** -0.5), abs=0.02)
    assert align[2] == pytest.approx(-(2 ** -0.5), abs=0.02) and align[3] is None
    assert r["direction_alignment"] == pytest.approx(-(2 ** -0.5) / 3, abs=0.02)
    not_moving = evaluate_toy(still[None], ["a red circle moving up"])
    assert not_moving["clips"][0]["direction_alignment"] == 0.0


def test_object_consistency_needs_a_steady_moving_object():
    bg = BACKGROUND / 127.5 - 1
    steady = draw("square", "blue", [(8 + t, 16) for t in range(16)])
    flicker = steady.clone()
    flicker[:, 1::2] = bg + (flicker[:, 1::2] - bg) * 0.7  # every other frame 30 % dimmer
    vanish = steady.clone()
    vanish[:, 4:8] = bg  # gone for 4 frames
    still = draw("square", "blue", [(8, 16)] * 16)
    r = evaluate_toy(torch.stack([steady, flicker, vanish, still]))
    a = {name: c for name, c in zip(("steady", "flicker", "vanish", "still"), r["clips"])}
    assert a["steady"]["object_consistency"] == pytest.approx(1.0, abs=1e-6)
    assert a["flicker"]["object_consistency"] < 0.95 and a["vanish"]["object_consistency"] < 0.75
    assert [a[k]["moving"] for k in a] == [True, True, True, False]
    # A still object keeps its appearance perfectly and wins pixel consistency, but it does not move:
    # the moving-object consistency leaves it out instead of rewarding it.
    assert a["still"]["pixel_consistency"] > a["steady"]["pixel_consistency"]
    assert r["moving_consistency"] == pytest.approx(np.mean([a[k]["object_consistency"] for k in ("steady", "flicker", "vanish")]))
    # Sub-pixel steps (bilinear shift) still measure a steady object as consistent.
    slow = analyse_clip(draw("circle", "red", [(8 + 0.6 * t, 10 + 0.3 * t) for t in range(16)]))
    assert slow["moving"] and slow["object_consistency"] > 0.97


def test_right_and_coherent_needs_appearance_and_motion():
    moving = draw("circle", "green", [(8 + t, 16) for t in range(16)])
    still = draw("circle", "green", [(16, 16)] * 16)
    r = evaluate_toy(torch.stack([moving, still, moving]), ["a green circle", "a green circle", "a red circle"])
    assert [c["right_and_coherent"] for c in r["clips"]] == [True, False, False]
    assert evaluate_toy(moving[None])["clips"][0]["right_and_coherent"] is None


def test_bad_input():
    with pytest.raises(TFT2VError, match="3, F, H, W"):
        analyse_clip(torch.zeros(16, 3, 32, 32))
    with pytest.raises(TFT2VError, match="prompts"):
        evaluate_toy([torch.zeros(3, 2, 8, 8)], ["a", "b"])
    assert detect_object(np.zeros((8, 8, 3))) is None
