"""On-the-fly condition extraction: shapes, ranges, determinism, masks, sketch, local image."""

import pytest
import torch

from tft2v.data.conditions import (
    CONDITION_NAMES,
    extract_conditions,
    local_image,
    masked_video,
    random_masks,
    sketch,
)
from tft2v.data.toy import ToyWorld, generate, to_pixels
from tft2v.errors import TFT2VError

# VGen's condition input channels (reference facts §4.3).
VGEN_CHANNELS = {"depth": 1, "sketch": 1, "motion": 2, "masked": 4, "local_image": 3, "single_sketch": 1}


@pytest.fixture(scope="module")
def video():
    data = generate("videos", 3, seed=4, world=ToyWorld(frames=6))
    return torch.stack([to_pixels(data.frames[i]) for i in range(3)])  # (3, 3, 6, 32, 32)


def test_all_conditions_shapes_and_ranges(video):
    conds = extract_conditions(video, CONDITION_NAMES, generator=torch.Generator().manual_seed(0),
                               depth_model="luminance")
    assert set(conds) == set(CONDITION_NAMES) == set(VGEN_CHANNELS)
    for name, x in conds.items():
        assert x.shape == (3, VGEN_CHANNELS[name], 6, 32, 32), name
        assert x.dtype == torch.float32 and torch.isfinite(x).all(), name
    for name in ("sketch", "single_sketch", "depth", "local_image"):
        assert conds[name].min() >= 0 and conds[name].max() <= 1, name
    assert conds["masked"][:, :3].abs().max() <= 1
    assert set(conds["masked"][:, 3].unique().tolist()) <= {0.0, 1.0}


def test_channel_counts_match_the_model():
    models = pytest.importorskip("tft2v.models.conditions")
    assert models.CONDITION_CHANNELS == VGEN_CHANNELS
    # One list of names: the extractor's are the model's, in the documented order.
    assert CONDITION_NAMES == tuple(models.CONDITION_CHANNELS)
    assert CONDITION_NAMES == ("sketch", "single_sketch", "depth", "motion", "masked", "local_image")


def test_sketch_marks_object_edges_only(video):
    s = sketch(video)[0, 0]  # (F, H, W)
    assert s.max() == pytest.approx(1.0)
    bright = (video[0].max(dim=0).values > -0.3)  # object pixels (F, H, W)
    # Strong edges sit on or next to the object, never far out in the textured background.
    near = torch.nn.functional.max_pool2d(bright.float(), 5, stride=1, padding=2).bool()
    assert (s[~near] < 0.25).all()
    assert s[near].max() > 0.9
    flat = torch.full((1, 3, 2, 16, 16), -0.9)
    assert sketch(flat).abs().max() == 0  # a flat clip has no edges


def test_single_sketch_and_local_image_repeat_the_first_frame(video):
    conds = extract_conditions(video, ["single_sketch", "sketch", "local_image"])
    for f in range(6):
        assert torch.equal(conds["single_sketch"][:, :, f], conds["sketch"][:, :, 0])
        assert torch.allclose(conds["local_image"][:, :, f], (video[:, :, 0] + 1) / 2)
    assert torch.allclose(local_image(video), conds["local_image"])


def test_masks_are_seeded_and_cover_all_kinds():
    a = random_masks(64, 24, 40, generator=torch.Generator().manual_seed(3))
    b = random_masks(64, 24, 40, generator=torch.Generator().manual_seed(3))
    c = random_masks(64, 24, 40, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (64, 1, 24, 40)
    frac = a.mean(dim=(1, 2, 3))
    assert (frac > 0).all() and (frac < 1).all()  # every mask hides something and keeps something
    for kind, probs in enumerate([(1, 0, 0), (0, 1, 0), (0, 0, 1)]):
        m = random_masks(8, 24, 40, generator=torch.Generator().manual_seed(0), probs=probs)[:, 0]
        border = torch.cat([m[:, 0], m[:, -1], m[:, :, 0], m[:, :, -1]], dim=1)
        if kind == 2:  # uncrop hides part of the border in every sample
            assert (border.sum(dim=1) > 0).all()
        if kind == 1:  # a rectangle: the hidden set equals its bounding box
            for mi in m:
                rows, cols = mi.any(dim=1).nonzero(), mi.any(dim=0).nonzero()
                assert mi.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)


def test_masked_video_follows_vgen_convention(video):
    mask = torch.zeros(3, 1, 32, 32)
    mask[:, :, :16] = 1  # hide the top half
    out = masked_video(video, mask)
    assert torch.equal(out[:, :3, :, 16:], video[:, :, :, 16:])
    assert (out[:, :3, :, :16] == 0).all()
    assert (out[:, 3, :, :16] == 0).all() and (out[:, 3, :, 16:] == 1).all()
    with pytest.raises(TFT2VError, match="mask must be"):
        masked_video(video, mask[:2])


def test_determinism_with_generator(video):
    g = lambda: torch.Generator().manual_seed(9)
    a = extract_conditions(video, ["masked", "motion"], generator=g())
    b = extract_conditions(video, ["masked", "motion"], generator=g())
    assert torch.equal(a["masked"], b["masked"]) and torch.equal(a["motion"], b["motion"])


def test_given_motion_vectors_are_used(video):
    mv = torch.randn(3, 2, 6, 32, 32)
    assert torch.equal(extract_conditions(video, ["motion"], motion_vectors=mv)["motion"], mv)
    with pytest.raises(TFT2VError, match="motion_vectors must be"):
        extract_conditions(video, ["motion"], motion_vectors=mv[:, :, :2])


def test_bad_input_errors(video):
    with pytest.raises(TFT2VError, match="unknown condition"):
        extract_conditions(video, ["canny"])
    with pytest.raises(TFT2VError, match="needs depth_model"):
        extract_conditions(video, ["depth"])
    with pytest.raises(TFT2VError, match=r"\(B, 3, F, H, W\)"):
        extract_conditions(video[:, :, 0], ["sketch"])
