"""tft2v.train.data: which streams a mix reads and the shapes-world streams the trainer and precompute share."""

from __future__ import annotations

from itertools import islice

import pytest
import torch

from tft2v.data.mixing import MixConfig
from tft2v.errors import ConfigError
from tft2v.train.data import mix_config, toy_streams, wanted_streams
from train_fixtures import tiny_config


@pytest.mark.parametrize("ratio, labelled, expected", [
    ((1, 1), 0.0, (True, True, False)),
    ((1, 1), 0.5, (True, True, True)),
    ((1, 1), 1.0, (True, False, True)),
    ((0, 1), 0.0, (False, True, False)),
    ((1, 0), 0.5, (True, False, False)),
])
def test_wanted_streams(ratio, labelled, expected):
    assert wanted_streams(MixConfig(2, 2, ratio, labelled)) == expected


def test_images_only_recipe_wants_no_videos(tmp_path):
    cfg = tiny_config(tmp_path, **{"recipe.text_free_videos": False})
    assert wanted_streams(mix_config(cfg)) == (True, False, False)


def test_toy_streams_same_sets_on_every_rank_in_rank_order(tmp_path):
    cfg = tiny_config(tmp_path, **{"data.toy_images": 5, "data.toy_videos": 3})
    rank0 = toy_streams(cfg, 0, True, True, False)
    rank1 = toy_streams(cfg, 1, True, True, False)
    assert rank0["captioned_videos"] is None and rank1["captioned_videos"] is None
    first = list(islice(rank0["images"], 5))
    assert all(s["pixels"].shape == (3, 1, 16, 16) and s["caption"] for s in first)
    assert all(s["pixels"].shape == (3, 4, 16, 16) and not s["caption"] for s in islice(rank0["videos"], 3))

    def key(s):
        return s["pixels"].flatten().tolist()

    other = list(islice(rank1["images"], 5))
    assert sorted(map(key, first)) == sorted(map(key, other))  # one set, one epoch each
    assert [key(s) for s in first] != [key(s) for s in other]  # walked in different orders
    again = list(islice(toy_streams(cfg, 0, True, False, False)["images"], 5))
    assert all(torch.equal(a["pixels"], b["pixels"]) for a, b in zip(first, again))


def test_toy_streams_bad_configs(tmp_path):
    with pytest.raises(ConfigError, match="square frames"):
        toy_streams(tiny_config(tmp_path, **{"data.width": 24}), 0, True, False, False)
    with pytest.raises(ConfigError, match="data.toy_captioned_videos must be >= 1"):
        toy_streams(tiny_config(tmp_path, **{"data.toy_captioned_videos": 0}), 0, False, False, True)
