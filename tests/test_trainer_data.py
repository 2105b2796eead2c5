"""tft2v.train.data: which streams a mix reads and the shapes-world streams the trainer and precompute share."""

from __future__ import annotations

from itertools import islice

import pytest
import torch

from tft2v.data.mixing import MixConfig
from tft2v.data.sharding import epoch_order
from tft2v.data.toy import ToyWorld, generate
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


def test_toy_streams_split_each_epoch_over_ranks_like_every_source(tmp_path):
    cfg = tiny_config(tmp_path, **{"data.toy_images": 5, "data.toy_videos": 3})
    rank0 = toy_streams(cfg, 0, True, True, False, world_size=2)
    rank1 = toy_streams(cfg, 1, True, True, False, world_size=2)
    assert rank0["captioned_videos"] is None and rank1["captioned_videos"] is None
    assert all(s["pixels"].shape == (3, 4, 16, 16) and not s["caption"] for s in islice(rank0["videos"], 3))
    walks = [list(islice(rank0["images"], 6)), list(islice(rank1["images"], 4))]  # two epochs of 3 and of 2
    assert all(s["pixels"].shape == (3, 1, 16, 16) and s["caption"] for s in walks[0] + walks[1])
    for epoch in range(2):
        order = epoch_order(5, cfg.seed * 1000, epoch)
        for rank, walk in enumerate(walks):  # the DistributedSampler rule of tft2v.data.sharding
            assert [s["key"] for s in walk if s["epoch"] == epoch] == [f"images/{i:06d}" for i in order[rank::2]]

    # One process walks the whole set in the order single-process runs always had.
    alone = [s["key"] for s in islice(toy_streams(cfg, 0, True, False, False)["images"], 10)]
    generated = generate("images", 5, seed=cfg.seed, world=ToyWorld(size=16, frames=4, size_range=(3, 6)))
    assert alone == [s["key"] for s in islice(generated.stream(seed=cfg.seed * 1000), 10)]
    first = next(iter(toy_streams(cfg, 0, True, False, False)["images"]))
    assert torch.equal(first["pixels"], generated.sample(int(first["key"].split("/")[1]))["pixels"])


def test_toy_streams_bad_configs(tmp_path):
    with pytest.raises(ConfigError, match="square frames"):
        toy_streams(tiny_config(tmp_path, **{"data.width": 24}), 0, True, False, False)
    with pytest.raises(ConfigError, match="data.toy_captioned_videos must be >= 1"):
        toy_streams(tiny_config(tmp_path, **{"data.toy_captioned_videos": 0}), 0, False, False, True)
    with pytest.raises(ConfigError, match="data.toy_images must be >= 3 for this recipe on 3 ranks, got 2"):
        toy_streams(tiny_config(tmp_path, **{"data.toy_images": 2}), 0, True, False, False, world_size=3)
