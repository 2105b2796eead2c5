"""Mixed image/video loader: ratio, semi-supervised flags, determinism, exact resume."""

import itertools

import pytest
import torch

from tft2v.data.mixing import MixConfig, MixedLoader, collate
from tft2v.data.toy import ToyWorld, generate
from tft2v.errors import TFT2VError

WORLD = ToyWorld(frames=4, size=16, size_range=(4, 6), speed_range=(1, 1.5))


@pytest.fixture(scope="module")
def sets():
    return {
        "images": generate("images", 30, seed=0, world=WORLD),
        "videos": generate("videos", 20, seed=0, world=WORLD),
        "captioned_videos": generate("captioned_videos", 10, seed=0, world=WORLD),
    }


class ListStream:
    """A plain finite re-iterable stream (no iter_from), like a sources dataset."""

    def __init__(self, samples):
        self.samples = samples

    def __iter__(self):
        return iter(self.samples)


def loader(sets, config, seed=0, captioned=True):
    return MixedLoader(
        sets["images"].stream(seed),
        sets["videos"].stream(seed),
        config,
        captioned_videos=sets["captioned_videos"].stream(seed) if captioned else None,
    )


def take(it, n):
    return list(itertools.islice(it, n))


@pytest.mark.parametrize("ratio", [(1, 1), (2, 1), (1, 3), (3, 2), (1, 0), (0, 1)])
def test_ratio_is_exact(sets, ratio):
    steps = take(iter(loader(sets, MixConfig(2, 2, ratio=ratio))), 6 * max(ratio))
    n_img = sum(s["image"] is not None for s in steps)
    n_vid = sum(s["video"] is not None for s in steps)
    assert (n_img, n_vid) == (6 * ratio[0], 6 * ratio[1])
    assert [s["step"] for s in steps] == list(range(len(steps)))
    assert all(s["image"] is not None or s["video"] is not None for s in steps)


def test_batch_shapes_and_flags(sets):
    step = next(iter(loader(sets, MixConfig(image_batch_size=5, video_batch_size=3))))
    img, vid = step["image"], step["video"]
    assert img["pixels"].shape == (5, 3, 1, 16, 16) and img["cond_frame"].shape == (5, 3, 16, 16)
    assert vid["pixels"].shape == (3, 3, 4, 16, 16)
    assert img["has_text"].dtype == torch.bool and img["has_text"].all()
    assert not vid["has_text"].any() and vid["caption"] == ["", "", ""]  # labelled_ratio 0: text-free
    assert len(img["key"]) == len(img["meta"]) == 5


@pytest.mark.parametrize("ratio", [0.25, 0.5, 1 / 3, 1.0])
def test_labelled_ratio_is_exact(sets, ratio):
    steps = take(iter(loader(sets, MixConfig(2, 4, labelled_ratio=ratio))), 12)
    flags = torch.cat([s["video"]["has_text"] for s in steps])
    assert int(flags.sum()) == int(48 * ratio + 1e-9)
    for s in steps:
        v = s["video"]
        for caption, has_text, key in zip(v["caption"], v["has_text"], v["key"]):
            # labelled slots come from the captioned stream and keep its caption
            assert bool(has_text) == key.startswith("captioned_videos/") == (caption != "")
            if has_text:
                assert " moving " in caption


def test_labelled_without_captioned_stream_keeps_video_captions(sets):
    cap = sets["captioned_videos"]
    ml = MixedLoader(None, cap.stream(1), MixConfig(1, 4, ratio=(0, 1), labelled_ratio=0.5))
    v = next(iter(ml))["video"]
    assert v["has_text"].tolist() == [False, True, False, True]
    assert v["caption"][0] == "" and " moving " in v["caption"][1]


def test_deterministic_and_seeded(sets):
    cfg = MixConfig(3, 2, ratio=(2, 1), labelled_ratio=0.5)
    keys = lambda steps: [(s["image"] or {}).get("key") for s in steps] + [(s["video"] or {}).get("key") for s in steps]
    a, b = take(iter(loader(sets, cfg)), 5), take(iter(loader(sets, cfg)), 5)
    assert keys(a) == keys(b)
    assert torch.equal(a[4]["image"]["pixels"], b[4]["image"]["pixels"])
    assert keys(a) != keys(take(iter(loader(sets, cfg, seed=1)), 5))


@pytest.mark.parametrize("plain", [False, True])
def test_resume_is_exact(sets, plain):
    cfg = MixConfig(4, 3, ratio=(3, 2), labelled_ratio=0.25)

    def make():
        if plain:  # finite streams without iter_from: resume by fast-forward, restart on exhaustion
            return MixedLoader(
                ListStream([sets["images"].sample(i) for i in range(7)]),
                ListStream([sets["videos"].sample(i) for i in range(5)]),
                cfg,
                captioned_videos=ListStream([sets["captioned_videos"].sample(i) for i in range(3)]),
            )
        return loader(sets, cfg)

    full = make()
    run = take(iter(full), 9)
    first = make()
    it = iter(first)
    take(it, 4)
    state = first.state_dict()
    assert state["step"] == 4
    resumed = make()
    resumed.load_state_dict(state)
    rest = take(iter(resumed), 5)
    for a, b in zip(run[4:], rest):
        assert a["step"] == b["step"]
        for branch in ("image", "video"):
            assert (a[branch] is None) == (b[branch] is None)
            if a[branch] is not None:
                assert a[branch]["key"] == b[branch]["key"]
                assert torch.equal(a[branch]["has_text"], b[branch]["has_text"])
                assert torch.equal(a[branch]["pixels"], b[branch]["pixels"])
    assert resumed.state_dict() == full.state_dict()


def test_errors(sets):
    with pytest.raises(TFT2VError, match="ratio"):
        MixConfig(ratio=(0, 0))
    with pytest.raises(TFT2VError, match="labelled_ratio"):
        MixConfig(labelled_ratio=1.5)
    with pytest.raises(TFT2VError, match="no image stream"):
        MixedLoader(None, sets["videos"].stream(), MixConfig())
    with pytest.raises(TFT2VError, match="yielded no samples"):
        next(iter(MixedLoader(ListStream([]), None, MixConfig(ratio=(1, 0)))))
    with pytest.raises(TFT2VError, match="frames"):  # a video in the image stream
        next(iter(MixedLoader(sets["videos"].stream(), None, MixConfig(ratio=(1, 0)))))
    with pytest.raises(TFT2VError, match="different pixel shapes"):
        collate([sets["images"].sample(0), sets["videos"].sample(0)])
    with pytest.raises(TFT2VError, match="bad mixing-loader state"):
        MixedLoader(sets["images"].stream(), None, MixConfig(ratio=(1, 0))).load_state_dict({"step": 1})
