"""TFT2VUNet: shapes, save/load, determinism, F=1 shortcuts, conditioning semantics."""

import pytest
import torch
import torch.nn.functional as F

from tft2v.errors import ConfigError
from tft2v.models import TFT2VUNet
from tft2v.models.blocks import Attention, TemporalConvBlock
from tests._tiny import TINY, tiny_unet


def _inputs(b=2, f=4, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 4, f, h, w, generator=g), torch.tensor([10, 700][:b]),
            torch.randn(b, 5, 32, generator=g), torch.randn(b, 24, generator=g))


def test_output_shape_video_and_image():
    model = tiny_unet()
    x, t, y, img = _inputs()
    with torch.no_grad():
        assert model(x, t, y).shape == x.shape
        assert model(x[:, :, :1], t, y, image_embeds=img).shape == (2, 4, 1, 8, 8)
        assert model(_inputs(h=8, w=16)[0], t, y).shape == (2, 4, 4, 8, 16)


def test_save_load_roundtrip(tmp_path):
    model = tiny_unet()
    x, t, y, img = _inputs()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = TFT2VUNet.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(model(x, t, y, img), loaded(x, t, y, img))


def test_deterministic():
    model = tiny_unet()
    x, t, y, img = _inputs()
    with torch.no_grad():
        assert torch.equal(model(x, t, y, img), model(x, t, y, img))


def test_fresh_init_temporal_layers_are_identity_on_clips():
    """Zero-initialised proj_out / conv4: a fresh model ignores frame order except via inputs."""
    model = TFT2VUNet(**TINY).eval()
    torch.nn.init.normal_(model.out[2].weight)
    x, t, y, _ = _inputs()
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        a = model(x, t, y)[:, :, perm]
        b = model(x[:, :, perm], t, y)
    assert torch.allclose(a, b, atol=1e-5)


def test_frame_order_matters_after_training_init():
    model = tiny_unet()
    x, t, y, _ = _inputs()
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        assert not torch.allclose(model(x, t, y)[:, :, perm], model(x[:, :, perm], t, y), atol=1e-3)


def test_temporal_conv_single_frame_shortcut_matches_conv3d():
    block = TemporalConvBlock(16, 8)
    torch.nn.init.normal_(block.conv4[-1].weight)
    x = torch.randn(2, 16, 1, 4, 4)
    full = x
    h = x
    for stage in (block.conv1, block.conv2, block.conv3, block.conv4):
        h = stage.eval()(h)
    full = x + h
    assert torch.allclose(block.eval()(x), full, atol=1e-5)


def test_attention_single_token_shortcut_matches_sdpa():
    attn = Attention(16, 2, 8)
    x = torch.randn(3, 1, 16)
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    ref = attn.to_out(F.scaled_dot_product_attention(q.view(3, 1, 2, 8).transpose(1, 2), k.view(3, 1, 2, 8).transpose(1, 2),
                                                     v.view(3, 1, 2, 8).transpose(1, 2)).transpose(1, 2).reshape(3, 1, 16))
    assert torch.allclose(attn(x), ref, atol=1e-6)


def test_image_tokens_absent_differs_from_zeroed():
    """Without an image nothing is appended; a dropped (zeroed) image still adds tokens (VGen)."""
    model = tiny_unet()
    x, t, y, img = _inputs()
    with torch.no_grad():
        none = model(x, t, y)
        with_img = model(x, t, y, img)
        dropped = model(x, t, y, img, dropout_masks={"image": torch.tensor([False, False])})
    assert not torch.allclose(none, with_img, atol=1e-4)
    assert not torch.allclose(none, dropped, atol=1e-6)
    model.pre_image_condition[2].bias.data.zero_()
    with torch.no_grad():
        zero_tokens = model(x, t, y, img, dropout_masks={"image": torch.tensor([False, False])})
    assert torch.allclose(dropped, zero_tokens)


def test_text_dropout_mask_zeroes_context_per_sample():
    model = tiny_unet()
    x, t, y, _ = _inputs()
    keep = torch.tensor([True, False])
    with torch.no_grad():
        out = model(x, t, y, dropout_masks={"text": keep})
        ref0 = model(x[:1], t[:1], y[:1])
        ref1 = model(x[1:], t[1:], torch.zeros_like(y[1:]))
    assert torch.allclose(out[:1], ref0, atol=1e-5)
    assert torch.allclose(out[1:], ref1, atol=1e-5)


def test_conditions_change_output_and_are_validated():
    model = tiny_unet(conditions=("depth", "sketch"))
    x, t, y, _ = _inputs()
    depth = torch.randn(2, 1, 4, 64, 64)
    with torch.no_grad():
        base = model(x, t, y)
        cond = model(x, t, y, conditions={"depth": depth})
    assert not torch.allclose(base, cond, atol=1e-4)
    with pytest.raises(ValueError, match="motion"):
        model(x, t, y, conditions={"motion": torch.randn(2, 2, 4, 64, 64)})
    with pytest.raises(ValueError, match="depth"):
        model(x, t, y, conditions={"depth": torch.randn(2, 3, 4, 64, 64)})
    with pytest.raises(ValueError, match="latent"):
        model(_inputs(h=4, w=4)[0], t, y, conditions={"depth": depth})


def test_unknown_condition_name_in_config():
    with pytest.raises(Exception, match="canny"):
        TFT2VUNet(**{**TINY, "conditions": ("canny",)})


def test_bad_input_shapes_raise_clear_errors():
    model = tiny_unet()
    x, t, y, _ = _inputs()
    with pytest.raises(ValueError, match=r"\(B, C, F, H, W\)"):
        model(x[:, :, 0], t, y)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        model(x, t, y[..., :8])
    with pytest.raises(ValueError, match="batch 3"):
        model(x, t, torch.cat([y, y[:1]]))
    with pytest.raises(ValueError, match="timestep"):
        model(x, torch.tensor([1, 2, 3]), y)


def test_dropout_masks_follow_vgen_scheme():
    model = tiny_unet()
    g = torch.Generator().manual_seed(0)
    m = model.sample_dropout_masks(20000, ["a", "b"], generator=g)
    both_dropped = (~m["a"] & ~m["b"]).float().mean().item()
    kept = m["a"].float().mean().item()
    # keep rate: all_keep .1 + free .8 × (1 − .4) = .58; both dropped: .1 + .8 × .16 = .228
    assert abs(kept - 0.58) < 0.015 and abs(both_dropped - 0.228) < 0.015
    g2 = torch.Generator().manual_seed(0)
    assert torch.equal(model.sample_dropout_masks(20000, ["a", "b"], generator=g2)["a"], m["a"])


def test_gradient_checkpointing_same_gradients():
    x, t, y, img = _inputs()
    grads = []
    for ckpt in (False, True):
        model = tiny_unet().train()
        if ckpt:
            model.enable_gradient_checkpointing()
        model(x, t, y, img).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_temporal_on_images_false_skips_temporal_layers_for_images():
    from tft2v.models.blocks import TemporalConvBlock, TemporalTransformer

    x, t, y, _ = _inputs(f=1)
    model = tiny_unet(temporal_on_images=False).train()
    model(x, t, y).square().mean().backward()
    temporal = [p for m in model.modules() if isinstance(m, (TemporalConvBlock, TemporalTransformer)) for p in m.parameters()]
    assert temporal and all(p.grad is None for p in temporal)
    with torch.no_grad():
        assert not torch.allclose(model.eval()(x, t, y), tiny_unet()(x, t, y), atol=1e-4)


def test_vgen_default_size_parameter_count():
    """The default config is VGen's released T2V UNet: 1,416,504,900 parameters (facts, appendix A)."""
    with torch.device("meta"):
        model = TFT2VUNet(image_embed_dim=1024)
    assert sum(p.numel() for p in model.parameters()) == 1_416_504_900


def test_frame_positions_start_as_a_no_op_and_then_tell_frames_apart():
    """Zero-initialised: a model given frame positions computes what it computed without them; once
    trained, frames with identical inputs differ by index, and images (F = 1) never see the embedding."""
    plain = tiny_unet()
    model = TFT2VUNet(**{**TINY, "frame_positions": True}).eval()
    missing = model.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("frame_embed.") for k in missing)
    x, t, y, img = _inputs()
    with torch.no_grad():
        assert torch.allclose(model(x, t, y, img), plain(x, t, y, img), atol=1e-6)  # per-frame matmuls round differently
        torch.nn.init.normal_(model.frame_embed[2].weight)
        same = x[:, :, :1].expand_as(x).contiguous()  # every frame identical
        out = model(same, t, y, img)
        assert not torch.allclose(out[:, :, 0], out[:, :, 3], atol=1e-4)
        assert torch.equal(model(x[:, :, :1], t, y, img), plain(x[:, :, :1], t, y, img))
    assert "frame_embed.0.weight" not in plain.state_dict()


def test_temporal_text_attention_starts_as_a_no_op_and_gradients_reach_it():
    """Not in VGen. Off: no new weights (VGen's state dict). On, forked from a trained model: the same
    outputs (zero output projection), the output projection gets gradients at once and, after it moves,
    so do the queries, keys and values; then the caption reaches the output through the temporal path."""
    plain = tiny_unet()
    model = plain.with_options(temporal_text_attention=True)
    new = sorted(set(model.state_dict()) - set(plain.state_dict()))
    assert new and all(".text_attn." in k or ".norm_text." in k for k in new)
    assert set(plain.state_dict()) < set(model.state_dict())
    x, t, y, img = _inputs()
    with torch.no_grad():
        assert torch.allclose(model(x, t, y, img), plain(x, t, y, img), atol=1e-6)
        assert torch.allclose(model(x[:, :, :1], t, y, img), plain(x[:, :, :1], t, y, img), atol=1e-6)

    def text_grads(part):
        model.zero_grad()
        model(x, t, y, img).square().mean().backward()
        return [p.grad for n, p in model.named_parameters() if f"text_attn.{part}" in n]

    assert all(g.abs().sum() > 0 for g in text_grads("to_out"))
    assert all(g.abs().sum() == 0 for g in text_grads("to_k"))  # behind a zero projection
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "text_attn.to_out.0.weight" in n:
                torch.nn.init.normal_(p, std=0.2)
    assert all(g.abs().sum() > 0 for part in ("to_q", "to_k", "to_v") for g in text_grads(part))
    with torch.no_grad():
        assert not torch.allclose(model(x, t, y, img), plain(x, t, y, img), atol=1e-4)
    with pytest.raises(ConfigError, match="switches on"):
        plain.with_options(refiner_layout=True)


def test_temporal_text_attention_round_trips_through_config_and_model_folder(tmp_path):
    """``model.unet.temporal_text_attention=true`` on a pretrained model without it adds the layers as a
    no-op; the result saves and loads with the option, and switching it off again is a contradiction."""
    from types import SimpleNamespace

    from tft2v.config import load_config
    from tft2v.train.data import build_unet

    plain = tiny_unet()
    plain.save_pretrained(tmp_path / "plain")
    parts = SimpleNamespace(text_dim=32, image_dim=24), SimpleNamespace(latent_channels=4)

    def build(folder, *unet):
        cfg = load_config(None, ["model.init=pretrained", f"model.init_path={tmp_path / folder}", *unet])
        return build_unet(cfg, *parts).eval()

    model = build("plain", "model.unet.temporal_text_attention=true")
    assert model.config.temporal_text_attention and not build("plain").config.temporal_text_attention
    x, t, y, img = _inputs()
    with torch.no_grad():
        assert torch.allclose(model(x, t, y, img), plain(x, t, y, img), atol=1e-6)
        for n, p in model.named_parameters():
            if "text_attn.to_out" in n:
                torch.nn.init.normal_(p, std=0.2)
        model.save_pretrained(tmp_path / "forked")
        loaded = build("forked")
        assert loaded.config.temporal_text_attention
        assert torch.equal(loaded(x, t, y, img), model(x, t, y, img))
    with pytest.raises(ConfigError, match="temporal_text_attention=False contradicts"):
        build("forked", "model.unet.temporal_text_attention=false")
