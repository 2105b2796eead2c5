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


def _tiny_unet(**kwargs):
    from tft2v.models import TFT2VUNet

    torch.manual_seed(0)
    return TFT2VUNet(in_channels=3, out_channels=3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                     attention_scales=(0.5,), head_dim=8, init_temporal_heads=1, norm_num_groups=4, context_dim=16,
                     image_embed_dim=None, dropout=0.0, temporal_conv_dropout=0.0, **kwargs)


def test_a_pretrained_model_without_conditions_grows_condition_encoders(tmp_path):
    from tft2v.train.data import add_conditions
    from tft2v.train.trainer import Trainer

    plain = _tiny_unet(condition_channels=0)
    with torch.no_grad():  # a scratch UNet's output conv is zero: give it something to compare
        for p in plain.parameters():
            p.add_(0.01 * torch.randn_like(p))
    plain.save_pretrained(tmp_path / "plain")
    settings = {"conditions": ("motion", "sketch"), "condition_channels": 4, "condition_pixel_size": (128, 128)}
    grown = add_conditions(plain, settings)
    assert set(grown.condition_encoders) == {"motion", "sketch"} and grown.config.condition_channels == 4
    x, t, text = torch.randn(1, 3, 4, 16, 16), torch.tensor([500]), torch.randn(1, 4, 16)
    conditions = {"motion": torch.randn(1, 2, 4, 16, 16), "sketch": torch.rand(1, 1, 4, 16, 16)}
    with torch.no_grad():
        before = plain(x, t, encoder_hidden_states=text)
        # The new channels of the first conv are zero: with or without conditions it is the pretrained model.
        assert torch.equal(grown(x, t, encoder_hidden_states=text), before)
        assert torch.allclose(grown(x, t, encoder_hidden_states=text, conditions=conditions), before, atol=1e-6)
    # The trainer grows it from the saved folder when the config asks for conditions the model lacks.
    cfg = tiny_config(tmp_path / "run", **{"model.init": "pretrained", "model.init_path": str(tmp_path / "plain"),
                                           "recipe.conditions": "[motion, sketch]", "model.unet.condition_channels": 4,
                                           "model.unet.condition_pixel_size": "[128, 128]"})
    unet = Trainer(cfg, overwrite=True).unet
    assert set(unet.condition_encoders) == {"motion", "sketch"}
    assert torch.equal(unet.state_dict()["input_blocks.1.0.in_layers.2.weight"],
                       plain.state_dict()["input_blocks.1.0.in_layers.2.weight"])
