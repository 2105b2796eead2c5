"""Tests for tft2v.data.cache and ``tft2v precompute``: a tiny AutoencoderKL + toy encoder cache built
from real files (toy world written as PNG / mp4 folders) reads back equal to direct encoding."""

from __future__ import annotations

import json

import pytest
import torch

from tft2v.autoencoder import IdentityAutoencoder, PatchAutoencoder, VideoAutoencoder
from tft2v.config import load_config
from tft2v.data.cache import (
    CacheWriter,
    CachedSource,
    check_manifest,
    collate_cached,
    read_manifest,
    weights_fingerprint,
)
from tft2v.data.sources import build_source
from tft2v.encoders import build_encoder
from tft2v.errors import TFT2VError

ENCODER_ARGS = {"text_dim": 16, "image_dim": 32, "max_length": 4}
GEOMETRY = {"height": 32, "width": 32, "num_frames": 4, "fps": 8.0}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A written toy data set (with one corrupt video), a tiny VAE folder and the config using both."""
    from diffusers import AutoencoderKL

    from tft2v.data.toy import ToyWorld
    from tft2v.data.toy_files import write_toy_dataset

    root = tmp_path_factory.mktemp("cache")
    write_toy_dataset(root / "toy", num_images=5, num_videos=3, num_captioned=2,
                      world=ToyWorld(size=32, frames=4))
    (root / "toy" / "videos" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                  norm_num_groups=4).save_pretrained(root / "vae")
    sets = {"data.kind": "sources", "data.images": root / "toy" / "images", "data.videos": root / "toy" / "videos",
            "data.captioned_videos": root / "toy" / "captioned_videos", "data.height": 32, "data.width": 32,
            "data.num_frames": 4, "data.fps": 8.0, "encoder.args": json.dumps(ENCODER_ARGS),
            "autoencoder.kind": "kl", "autoencoder.path": root / "vae"}
    cfg = load_config(None, [f"{k}={v}" for k, v in sets.items()])
    from tft2v.commands.precompute import precompute_cache

    manifest = precompute_cache(cfg, root / "cache", shard_size=2, batch_size=3, progress=False)
    return {"root": root, "cfg": cfg, "cache": root / "cache", "manifest": manifest}


def _raw(world, name, kind):
    d = world["cfg"].data
    return list(build_source(getattr(d, name), kind=kind, num_frames=4, fps=8.0, size=(32, 32), shuffle=False,
                             rank=0, world_size=1))


def test_manifest_counts_skips_and_identity(world):
    m = read_manifest(world["cache"])
    assert {k: v["count"] for k, v in m["streams"].items()} == {"images": 5, "videos": 3, "captioned_videos": 2}
    assert m["streams"]["videos"]["skipped"] == 1 and m["skips"]["videos"] == {"corrupt": 1}
    assert [s["count"] for s in m["streams"]["images"]["shards"]] == [2, 2, 1]
    assert m["streams"]["images"]["frames"] == 1 and m["streams"]["videos"]["frames"] == 4
    assert m["geometry"] == GEOMETRY and m["autoencoder"]["scaling_factor"] == pytest.approx(0.18215)
    assert m["encoder"]["fingerprint"] == weights_fingerprint(build_encoder("toy", **ENCODER_ARGS))


@pytest.mark.parametrize("name,kind", [("images", "image"), ("videos", "video"), ("captioned_videos", "video")])
def test_read_back_equals_direct_encoding(world, name, kind):
    ae = VideoAutoencoder.from_pretrained(world["root"] / "vae")
    enc = build_encoder("toy", **ENCODER_ARGS)
    raw = _raw(world, name, kind)
    cached = list(CachedSource(world["cache"], name, shuffle=False))
    assert [c["key"] for c in cached] == [r["key"] for r in raw]
    for r, c in zip(raw, cached):
        mean, std = ae.posterior(r["pixels"][None])
        torch.testing.assert_close(c["latent_mean"], mean[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c["latent_std"], std[0], atol=1e-5, rtol=1e-5)
        assert c["caption"] == r["caption"] and c["has_text"] == bool(r["caption"])
        torch.testing.assert_close(c["text_tokens"], enc.encode_text([r["caption"]])[0])
        frame = r["cond_frame"] if kind == "video" else r["pixels"][:, 0]
        torch.testing.assert_close(c["image_embed"], enc.encode_image(frame[None])[0], atol=1e-5, rtol=1e-5)
    # A fresh posterior sample from the cache is the one encode() draws from the same generator state.
    batch = collate_cached(cached)
    z_cache = ae.sample_posterior(batch["latent_mean"], batch["latent_std"], torch.Generator().manual_seed(3))
    z_raw = ae.encode(torch.stack([r["pixels"] for r in raw]), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(z_cache, z_raw, atol=1e-5, rtol=1e-5)
    assert not torch.equal(z_cache, ae.sample_posterior(batch["latent_mean"], batch["latent_std"],
                                                        torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("ae", [IdentityAutoencoder(), PatchAutoencoder(2)], ids=["none", "patch"])
def test_pixel_space_autoencoders_store_their_exact_latents(tmp_path, world, ae):
    enc = build_encoder("toy", **ENCODER_ARGS, seed=1)
    raw = _raw(world, "images", "image")
    writer = CacheWriter(tmp_path / "c", enc, ae, GEOMETRY, shard_size=4)
    writer.write_stream("images", raw + [None])
    assert writer.finish()["streams"]["images"]["skipped"] == 1
    cached = list(CachedSource(tmp_path / "c", "images", shuffle=False))
    assert all("latent_std" not in c for c in cached)
    assert all(torch.equal(c["latent_mean"], ae.encode(r["pixels"][None])[0]) for c, r in zip(cached, raw))
    g = torch.Generator().manual_seed(0)
    batch = collate_cached(cached)
    assert torch.equal(ae.sample_posterior(batch["latent_mean"], None, g), batch["latent_mean"])
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())  # draws nothing


def test_shuffle_is_seeded_and_shards_are_disjoint(world):
    def keys(**kw):
        return [s["key"] for s in CachedSource(world["cache"], "images", **kw)]

    everything = keys(shuffle=False)
    assert keys(seed=1) == keys(seed=1) != keys(seed=2)
    assert sorted(keys(seed=1)) == sorted(everything)
    parts = [keys(seed=1, rank=r, world_size=2) for r in range(2)]
    assert not set(parts[0]) & set(parts[1]) and sorted(parts[0] + parts[1]) == sorted(everything)
    source = CachedSource(world["cache"], "images", seed=1)
    epoch0 = [s["key"] for s in source]
    source.set_epoch(1)
    assert sorted(s["key"] for s in source) == sorted(epoch0)
    # iter_from is endless across epochs and resumes at any position.
    source.set_epoch(0)
    long = [s["key"] for _, s in zip(range(12), source.iter_from(0))]
    assert long[:5] == epoch0 and [s["key"] for _, s in zip(range(5), source.iter_from(7))] == long[7:12]
    with pytest.raises(TFT2VError, match="5 samples cannot feed 8 readers"):
        next(iter(CachedSource(world["cache"], "images", rank=7, world_size=8)))


def test_dataloader_workers_split_the_stream(world):
    from torch.utils.data import DataLoader

    loader = DataLoader(CachedSource(world["cache"], "images", seed=3), batch_size=None, num_workers=2)
    assert sorted(s["key"] for s in loader) == sorted(s["key"] for s in CachedSource(world["cache"], "images"))


def test_mixed_loader_reads_cached_streams(world):
    from tft2v.data.mixing import MixConfig, MixedLoader

    streams = {n: CachedSource(world["cache"], n, seed=0) for n in ("images", "videos", "captioned_videos")}
    loader = MixedLoader(streams["images"], streams["videos"], MixConfig(2, 2, (1, 1), 0.5),
                         captioned_videos=streams["captioned_videos"], collate_fn=collate_cached)
    step = next(iter(loader))
    image, video = step["image"], step["video"]
    assert image["latent_mean"].shape == (2, 4, 1, 16, 16) and image["text_tokens"].shape == (2, 4, 16)
    assert video["latent_std"].shape == (2, 4, 4, 16, 16) and video["image_embed"].shape == (2, 32)
    assert video["has_text"].tolist() == [False, True]


def test_mismatched_cache_is_rejected_in_one_line(world, tmp_path):
    m = read_manifest(world["cache"])
    ae = VideoAutoencoder.from_pretrained(world["root"] / "vae")
    check_manifest(m, build_encoder("toy", **ENCODER_ARGS), ae, GEOMETRY)
    with pytest.raises(TFT2VError, match="encoder fingerprint") as err:
        check_manifest(m, build_encoder("toy", **ENCODER_ARGS, seed=5), ae)
    assert "\n" not in str(err.value)
    with pytest.raises(TFT2VError, match="autoencoder kind 'kl', this run uses 'none'"):
        check_manifest(m, build_encoder("toy", **ENCODER_ARGS), IdentityAutoencoder())
    with pytest.raises(TFT2VError, match="data.num_frames 4, this run uses 16"):
        check_manifest(m, geometry={**GEOMETRY, "num_frames": 16})
    with pytest.raises(TFT2VError, match="no manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({**m, "version": 99}))
    with pytest.raises(TFT2VError, match="cache version 99"):
        read_manifest(tmp_path)
    with pytest.raises(TFT2VError, match="no 'depth' stream"):
        CachedSource(world["cache"], "depth")


def test_cli_refuses_to_overwrite(world, capsys):
    from tft2v.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["precompute", "--out", str(world["cache"])])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {world['cache']} already holds a cache; write to a new folder"


def _tiny_unet(in_channels: int):
    from tft2v.models import TFT2VUNet

    torch.manual_seed(0)
    unet = TFT2VUNet(in_channels=in_channels, out_channels=in_channels, model_channels=8, channel_mult=(1, 2),
                     num_res_blocks=1, attention_scales=(0.5,), head_dim=8, init_temporal_heads=1, context_dim=16,
                     image_embed_dim=32, norm_num_groups=4, dropout=0.0, temporal_conv_dropout=0.0,
                     condition_channels=0)
    with torch.no_grad():  # non-zero output layers so every input reaches the loss
        for p in unet.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return unet


@pytest.mark.parametrize("branch,name,kind", [("image", "images", "image"), ("video", "captioned_videos", "video")])
def test_training_step_from_cache_equals_step_from_pixels(world, branch, name, kind):
    from tft2v.config import RecipeConfig
    from tft2v.data.mixing import collate
    from tft2v.diffusion import ScheduleConfig, build_training_scheduler
    from tft2v.train.recipe import Recipe, sample_generators

    ae = VideoAutoencoder.from_pretrained(world["root"] / "vae")
    enc = build_encoder("toy", **ENCODER_ARGS)
    unet = _tiny_unet(4)
    # No text dropout: it could hide a wrong text embedding behind the empty one.
    cfg = RecipeConfig(image_tokens_on_images=True, text_dropout=0.0, image_token_dropout=0.5)
    recipe = Recipe(cfg, ScheduleConfig(), enc, ae, build_training_scheduler(ScheduleConfig()))
    text_free = {"caption": "", "has_text": False}  # what the mixing loader does to a text-free slot
    raw, cached = _raw(world, name, kind)[:2], list(CachedSource(world["cache"], name, shuffle=False))[:2]
    if branch == "video":
        raw[0], cached[0] = {**raw[0], **text_free}, {**cached[0], **text_free}
    grads = []
    for batch in (collate(raw), collate_cached(cached)):
        unet.zero_grad()
        loss, logged = recipe.branch_loss(unet, unet, batch, branch,
                                            sample_generators(5, 3, branch, 0, len(batch["key"])), "cpu")
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in unet.parameters() if p.grad is not None]))
    assert float(grads[0][0]) > 0
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-5, rtol=1e-5)
    assert len(grads[0][1]) == len(grads[1][1])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


TRAIN_SETS = {
    "data.toy_images": 6, "data.toy_videos": 4, "data.toy_captioned_videos": 2, "data.labelled_ratio": 0.5,
    "data.height": 32, "data.width": 32, "data.num_frames": 4, "data.image_batch_size": 2,
    "data.video_batch_size": 2, "encoder.args": json.dumps(ENCODER_ARGS),
    "model.unet": "{model_channels: 8, channel_mult: [1, 2], num_res_blocks: 1, attention_scales: [0.5],"
                  " head_dim: 8, init_temporal_heads: 1, norm_num_groups: 4, condition_channels: 0, dropout: 0.0}",
    "train.max_steps": 2, "train.checkpoint_every": 0, "train.progress": False, "train.trackers": "[]",
    "train.export": False,
}


@pytest.mark.slow
def test_trainer_trains_from_a_precomputed_cache(tmp_path):
    from tft2v.commands.precompute import precompute_cache
    from tft2v.train import Trainer

    sets = [f"{k}={v}" for k, v in TRAIN_SETS.items()]
    precompute_cache(load_config(None, sets), tmp_path / "cache", progress=False)
    cfg = load_config(None, sets + [f"data.cache={tmp_path / 'cache'}", f"out_dir={tmp_path / 'run'}"])
    trainer = Trainer(cfg)
    assert isinstance(trainer.loader.streams["videos"], CachedSource)
    summary = trainer.run()
    assert summary["steps"] == 2 and torch.isfinite(torch.tensor(summary["loss_last"]))
    other = load_config(None, sets + [f"data.cache={tmp_path / 'cache'}", f"out_dir={tmp_path / 'run2'}",
                                      'encoder.args={text_dim: 16, image_dim: 32, max_length: 4, seed: 9}'])
    with pytest.raises(TFT2VError, match="was built with encoder fingerprint"):
        Trainer(other)


def test_toy_precompute_writes_one_epoch_of_the_trainers_toy_streams(tmp_path):
    from itertools import islice

    from tft2v.commands.precompute import precompute_cache
    from tft2v.train.data import mix_config, toy_streams, wanted_streams

    cfg = load_config(None, [f"{k}={v}" for k, v in TRAIN_SETS.items()])
    precompute_cache(cfg, tmp_path / "cache", shard_size=4, progress=False)
    streams = toy_streams(cfg, 0, *wanted_streams(mix_config(cfg)))
    for name, count in (("images", 6), ("videos", 4), ("captioned_videos", 2)):
        cached = CachedSource(tmp_path / "cache", name, shuffle=False)
        assert len(cached) == count
        for i, sample in enumerate(islice(streams[name], count)):
            # autoencoder 'none': the cached posterior mean is the pixels themselves
            assert torch.equal(cached.sample(i)["latent_mean"], sample["pixels"])
            assert cached.sample(i)["caption"] == sample["caption"]
