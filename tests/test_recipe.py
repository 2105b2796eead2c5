"""The TF-T2V step: every recipe switch is a config value that changes what the step computes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tft2v.config import RecipeConfig
from tft2v.data.toy import ToyWorld, generate
from tft2v.diffusion import ScheduleConfig, build_training_scheduler
from tft2v.encoders import build_encoder
from tft2v.autoencoder import build_autoencoder
from tft2v.data.mixing import collate
from tft2v.models import TFT2VUNet
from tft2v.train.recipe import Recipe, sample_generators

WORLD = ToyWorld(size=32, frames=4)


@pytest.fixture(scope="module")
def parts():
    encoder = build_encoder("toy", text_dim=16, image_dim=32, max_length=4)
    torch.manual_seed(0)
    unet = TFT2VUNet(in_channels=3, out_channels=3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                     attention_scales=(0.5,), head_dim=8, init_temporal_heads=1, context_dim=16, image_embed_dim=32,
                     norm_num_groups=4, dropout=0.0, temporal_conv_dropout=0.0,
                     conditions=("sketch", "masked"), condition_channels=4, condition_pixel_size=(256, 256))
    with torch.no_grad():  # non-zero output layers so every input reaches the loss
        for p in unet.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    videos = [generate("captioned_videos", 2, seed=1, world=WORLD).sample(i) for i in range(2)]
    videos[1] = {**videos[1], "caption": "", "has_text": False}  # one labelled, one text-free
    images = [generate("images", 2, seed=1, world=WORLD).sample(i) for i in range(2)]
    return {"encoder": encoder, "unet": unet, "video": collate(videos), "image": collate(images)}


def recipe(parts, **kw):
    cfg = dataclasses.replace(RecipeConfig(text_dropout=0.0, image_token_dropout=0.0), **kw)
    schedule = ScheduleConfig()
    return Recipe(cfg, schedule, parts["encoder"], build_autoencoder("none"), build_training_scheduler(schedule))


def loss(parts, branch, seed=0, **kw):
    torch.manual_seed(0)  # the UNet's own dropout layers draw from the global RNG
    out, logged = recipe(parts, **kw).branch_loss(parts["unet"], parts["unet"], parts[branch], branch,
                                                  sample_generators(seed, 0, branch, 0, 2), "cpu")
    return out, logged


def inputs(parts, branch, seed=0, **kw):
    return recipe(parts, **kw).inputs(parts[branch], branch, sample_generators(seed, 0, branch, 0, 2), "cpu")


def test_semi_supervised_text_and_motion_branch_empty_text(parts):
    enc = parts["encoder"]
    text = inputs(parts, "video")["encoder_hidden_states"]
    assert torch.equal(text[0], enc.encode_text([parts["video"]["caption"][0]])[0])  # labelled keeps its caption
    assert torch.equal(text[1], enc.encode_text([""])[0])  # text-free -> empty-string embedding
    img = inputs(parts, "image")["encoder_hidden_states"]
    assert torch.equal(img, enc.encode_text(parts["image"]["caption"]))  # content branch: captions


def test_image_tokens_switches(parts):
    enc = parts["encoder"]
    v = inputs(parts, "video")
    assert torch.equal(v["image_embeds"], enc.encode_image(parts["video"]["cond_frame"]))
    assert inputs(parts, "video", image_tokens_on_videos=False)["image_embeds"] is None
    assert inputs(parts, "image")["image_embeds"] is None
    on = inputs(parts, "image", image_tokens_on_images=True)["image_embeds"]
    assert torch.equal(on, enc.encode_image(parts["image"]["pixels"][:, :, 0]))
    assert not torch.equal(loss(parts, "video")[0], loss(parts, "video", image_tokens_on_videos=False)[0])


def test_cfg_text_dropout_target(parts):
    enc = parts["encoder"]
    empty = inputs(parts, "image", text_dropout=1.0)["encoder_hidden_states"]
    assert torch.equal(empty, enc.encode_text(["", ""]))
    neg = inputs(parts, "image", text_dropout=1.0, text_dropout_to="negative", negative_prompt="blurry")
    assert torch.equal(neg["encoder_hidden_states"], enc.encode_text(["blurry", "blurry"]))
    assert not torch.equal(empty, neg["encoder_hidden_states"])


def test_coherence_weight_changes_video_loss_only(parts):
    l0, parts0 = loss(parts, "video", coherence_weight=0.0)
    l5, parts5 = loss(parts, "video", coherence_weight=0.5)
    assert parts0["video/coherence"] > 0
    assert float((l5 - l0).detach()) == pytest.approx(0.5 * parts0["video/coherence"], rel=1e-5)
    i0, _ = loss(parts, "image", coherence_weight=0.0)
    i5, _ = loss(parts, "image", coherence_weight=0.5)
    assert torch.equal(i0, i5)  # L_coh is zero for 1-frame samples


def test_text_free_videos_switch(parts):
    on, _ = loss(parts, "video")
    off, logged = loss(parts, "video", text_free_videos=False)
    assert not torch.equal(on, off)
    w = recipe(parts, text_free_videos=False).sample_weights(parts["video"], "video", "cpu")
    assert w.tolist() == [1.0, 0.0]
    # Only the labelled sample contributes: its per-sample loss is the branch loss.
    assert float(off.detach()) == pytest.approx(logged["video/base"] + 0.1 * logged["video/coherence"], rel=1e-5)


def test_branch_weights(parts):
    base, _ = loss(parts, "image")
    assert float(loss(parts, "image", image_loss_weight=3.0)[0].detach()) == pytest.approx(3 * float(base.detach()), rel=1e-6)
    vbase, _ = loss(parts, "video")
    assert float(loss(parts, "video", video_loss_weight=0.5)[0].detach()) == pytest.approx(0.5 * float(vbase.detach()), rel=1e-6)


def test_compositional_conditions_and_dropout(parts):
    inp = inputs(parts, "video", conditions=("sketch", "masked"))
    assert set(inp["conditions"]) == {"sketch", "masked"}
    assert inp["conditions"]["sketch"].shape == (2, 1, 4, 32, 32) and inp["conditions"]["masked"].shape[1] == 4
    img = inputs(parts, "image", conditions=("sketch",))
    assert img["conditions"]["sketch"].shape == (2, 1, 1, 32, 32)  # extracted from images too (F = 1)
    plain, _ = loss(parts, "video")
    cond, _ = loss(parts, "video", conditions=("sketch", "masked"), condition_dropout=False)
    assert not torch.equal(plain, cond)
    # With condition dropout on, the masks come from the step's generator.
    a, _ = loss(parts, "video", conditions=("sketch", "masked"))
    assert not torch.equal(a, cond)


def test_video_high_noise_share_biases_video_timesteps_only(parts):
    default = inputs(parts, "video")["t"]
    off = dict(video_high_noise_share=0.0, video_high_noise_start=900)
    assert torch.equal(inputs(parts, "video", **off)["t"], default)
    on = dict(video_high_noise_share=1.0, video_high_noise_start=990)
    high = inputs(parts, "video", **on)["t"]
    assert high.min() >= 990 and high.max() < 1000
    assert torch.equal(inputs(parts, "image", **on)["t"], inputs(parts, "image")["t"])  # content branch: uniform t


def test_step_is_a_function_of_the_generator(parts):
    a, _ = loss(parts, "video", seed=1)
    b, _ = loss(parts, "video", seed=1)
    c, _ = loss(parts, "video", seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_loss_backpropagates_to_the_unet(parts):
    unet = parts["unet"]
    unet.zero_grad()
    out, _ = loss(parts, "video", conditions=("sketch",), condition_dropout=False)
    out.backward()
    assert unet.condition_encoders["sketch"].spatial[0].weight.grad.abs().sum() > 0
    assert unet.pre_image_condition[0].weight.grad.abs().sum() > 0
    unet.zero_grad()


def test_video_colour_permute_reorders_each_clips_channels(parts):
    from tft2v.errors import TFT2VError

    batch, gens = parts["video"], sample_generators(0, 0, "video", 0, 2)
    order = [torch.randperm(3, generator=g) for g in gens]  # what the recipe draws first, per sample
    assert any(not torch.equal(o, torch.arange(3)) for o in order)  # this seed does reorder
    pixels = torch.stack([p[o] for p, o in zip(batch["pixels"], order)])
    frames = torch.stack([c[o] for c, o in zip(batch["cond_frame"], order)])
    permuted = {**batch, "pixels": pixels, "cond_frame": frames}
    expected = recipe(parts).inputs(permuted, "video", gens, "cpu")
    got = inputs(parts, "video", video_colour_permute=True)
    for key in ("x_t", "t", "target", "image_embeds"):
        assert torch.equal(got[key], expected[key]), key
    assert not torch.equal(got["x_t"], inputs(parts, "video")["x_t"])
    assert torch.equal(inputs(parts, "image", video_colour_permute=True)["x_t"], inputs(parts, "image")["x_t"])
    cached = {**batch, "latent_mean": batch["pixels"]}
    gens = sample_generators(0, 0, "video", 0, 2)
    with pytest.raises(TFT2VError, match="cache"):
        recipe(parts, video_colour_permute=True).inputs(cached, "video", gens, "cpu")
