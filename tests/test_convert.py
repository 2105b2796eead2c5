"""VGen checkpoint loading (containers, errors) and SD-2.1 inflation into the video UNet."""

import re

import pytest
import torch

from tft2v.convert import (
    diffusers_unet2d_to_ldm,
    infer_vgen_config,
    inflate_sd21,
    infer_sd_unet_config,
    load_vgen_unet,
    vgen_key_to_ours,
)
from tft2v.errors import CheckpointError, ConfigError
from tests._tiny import tiny_sd_unet2d, tiny_unet

VGEN_CFG = dict(in_dim=4, dim=32, context_dim=32, out_dim=4, dim_mult=[1, 2], num_heads=2, head_dim=16,
                num_res_blocks=1, attn_scales=[1, 0.5], dropout=0.0, num_tokens=2, resolution=[64, 64],
                video_compositions=["text", "image", "depthmap", "mask"])


def _ours_to_vgen(key: str) -> str:
    key = key.replace(".temporal_conv.", ".temopral_conv.")
    for ours, (conv, after) in {"depth": ("depth_embedding", "depth_embedding_after"),
                                "masked": ("masked_embedding", "mask_embedding_after")}.items():
        p = f"condition_encoders.{ours}."
        if key.startswith(p + "spatial."):
            return conv + "." + key[len(p + "spatial."):]
        if key.startswith(p + "temporal."):
            rest = key[len(p + "temporal."):]
            for a, b in {"norm": "layers.0.0.norm", "attn.to_qkv": "layers.0.0.fn.to_qkv",
                         "attn.to_out.0": "layers.0.0.fn.to_out.0", "ff.0": "layers.0.1.net.0.0",
                         "ff.3": "layers.0.1.net.2"}.items():
                if rest.startswith(a + "."):
                    return f"{after}.{b}{rest[len(a):]}"
    return key


@pytest.fixture(scope="module")
def vgen_model():
    # image_embed_dim = context_dim, as VGen builds it
    return tiny_unet(model_channels=32, head_dim=16, norm_num_groups=32, image_embed_dim=32, conditions=("depth", "masked"))


@pytest.fixture(scope="module")
def vgen_sd(vgen_model):
    return {_ours_to_vgen(k): v for k, v in vgen_model.state_dict().items()}


def test_vgen_names_map_back(vgen_sd, vgen_model):
    assert "mask_embedding_after.layers.0.1.net.2.weight" in vgen_sd
    assert any(".temopral_conv." in k for k in vgen_sd)
    assert {vgen_key_to_ours(k) for k in vgen_sd} == set(vgen_model.state_dict())


@pytest.mark.parametrize("container", ["raw", "state_dict", "module_prefix", "safetensors", "mapping"])
def test_load_vgen_containers(tmp_path, vgen_sd, vgen_model, container):
    if container == "mapping":
        src = vgen_sd
    elif container == "safetensors":
        from safetensors.torch import save_file

        src = tmp_path / "m.safetensors"
        save_file({k: v.contiguous() for k, v in vgen_sd.items()}, str(src))
    else:
        obj = {"raw": vgen_sd, "state_dict": {"state_dict": vgen_sd, "step": 5},
               "module_prefix": {"module." + k: v for k, v in vgen_sd.items()}}[container]
        src = tmp_path / "m.pth"
        torch.save(obj, src)
    model = load_vgen_unet(src, VGEN_CFG)
    x = torch.randn(1, 4, 2, 8, 8)
    y = torch.randn(1, 3, 32)
    with torch.no_grad():
        assert torch.equal(model(x, torch.tensor([3]), y), vgen_model(x, torch.tensor([3]), y))


def test_missing_and_unexpected_keys_are_named(tmp_path, vgen_sd):
    sd = dict(vgen_sd)
    del sd["out.2.bias"]
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing key\(s\) e\.g\. out\.2\.bias.*unexpected key\(s\) e\.g\. extra\.weight"):
        load_vgen_unet(sd, VGEN_CFG)


def test_shape_mismatch_is_named(vgen_sd):
    sd = dict(vgen_sd)
    sd["out.2.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointError, match=r"out\.2\.bias has shape \(7,\)"):
        load_vgen_unet(sd, VGEN_CFG)


def test_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_vgen_unet(tmp_path / "nope.pth", VGEN_CFG)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_vgen_unet(bad, VGEN_CFG)
    code = tmp_path / "code.pth"
    torch.save({"a": object()}, code)  # pickles that carry code are refused by weights_only
    with pytest.raises(CheckpointError):
        load_vgen_unet(code, VGEN_CFG)


def test_unknown_or_unsupported_config_keys(vgen_sd):
    with pytest.raises(ConfigError, match="unknown VGen UNet config key.*bogus"):
        load_vgen_unet(vgen_sd, {**VGEN_CFG, "bogus": 1})
    with pytest.raises(ConfigError, match="use_fps_condition"):
        load_vgen_unet(vgen_sd, {**VGEN_CFG, "use_fps_condition": True})
    with pytest.raises(ConfigError, match="canny"):
        load_vgen_unet(vgen_sd, {**VGEN_CFG, "video_compositions": ["text", "canny"]})


VIDEOLCM_CFG = dict(type="UNetSD_VideoLCM", use_lcm=True, in_dim=4, dim=32, context_dim=32, out_dim=4,
                    dim_mult=[1, 2], num_heads=2, head_dim=16, num_res_blocks=1, attn_scales=[1, 0.5], dropout=0.0,
                    video_compositions=["text"], resolution=[64, 64])


@pytest.mark.parametrize("guidance", [False, True])
def test_load_vgen_videolcm_state_dict(tmp_path, guidance):
    """VideoLCM's layout (facts §4.1): TF-T2V's T2V keys without pre_image_condition and 8 condition channels in
    the first conv; a checkpoint that trained VGen's commented-out time_embed_w gets our guidance embedding."""
    ours = tiny_unet(model_channels=32, head_dim=16, norm_num_groups=32, image_embed_dim=None, condition_channels=8,
                     guidance_embed=guidance)
    sd = {_ours_to_vgen(k): v for k, v in ours.state_dict().items()}
    assert not any(k.startswith("pre_image_condition") for k in sd) and any(".temopral_conv." in k for k in sd)
    assert sd["input_blocks.0.0.weight"].shape[1] == 12 and ("time_embed_w.2.weight" in sd) == guidance
    torch.save({"state_dict": sd}, tmp_path / "videolcm.pth")
    model = load_vgen_unet(tmp_path / "videolcm.pth", VIDEOLCM_CFG)
    assert bool(model.config.guidance_embed) == guidance and model.config.image_embed_dim is None
    x, y, t = torch.randn(1, 4, 2, 8, 8), torch.randn(1, 3, 32), torch.tensor([999])
    kw = {"guidance": torch.tensor([9.0])} if guidance else {}
    with torch.no_grad():
        assert torch.equal(model(x, t, y, **kw), ours(x, t, y, **kw))
        if guidance:  # the loaded embedding reads w
            assert not torch.equal(model(x, t, y, guidance=torch.tensor([3.0])), model(x, t, y, **kw))
    inferred = infer_vgen_config(sd, head_dim=16)
    assert inferred.get("type") == ("UNetSD_VideoLCM" if guidance else None)
    assert inferred["video_compositions"] == ["text"] and inferred["in_dim"] == 4
    if guidance:
        with pytest.raises(ConfigError, match="guidance embedding.*UNetSD_VideoLCM"):
            load_vgen_unet(sd, {**VIDEOLCM_CFG, "type": "UNetSD_TFT2V"})


# -- SD 2.1 inflation ---------------------------------------------------------------------------

def _check_inflated_matches(video, unet2d):
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([5, 600])
    ctx = torch.randn(2, 7, 32)
    with torch.no_grad():
        ref = unet2d(x, t, ctx).sample
        out = video(x[:, :, None], t, ctx)[:, :, 0]
        assert (out - ref).abs().max() < 1e-4
        clip = video(x[:, :, None].expand(-1, -1, 3, -1, -1), t, ctx)
    # identity-initialised temporal layers: a static clip gives the 2-D result on every frame
    assert (clip - ref[:, :, None]).abs().max() < 1e-4


def test_inflate_diffusers_folder_equals_2d_unet(tmp_path):
    unet2d = tiny_sd_unet2d()
    unet2d.save_pretrained(tmp_path / "sd" / "unet")
    video = inflate_sd21(tmp_path / "sd", image_embed_dim=None, init_temporal_heads=2)
    assert video.config.model_channels == 16 and video.config.attention_scales == (1.0,)
    _check_inflated_matches(video, unet2d)


def _ldm_ckpt(path, unet2d, layers_per_block=1):
    """Write ``unet2d`` as an SD single-file checkpoint: LDM names under model.diffusion_model., plus a VAE key."""
    ldm = diffusers_unet2d_to_ldm(unet2d.state_dict(), layers_per_block=layers_per_block)
    torch.save({"state_dict": {"model.diffusion_model." + k: v for k, v in ldm.items()}
                | {"first_stage_model.x": torch.zeros(1)}}, path)
    return path


def test_inflate_ldm_checkpoint_equals_2d_unet(tmp_path):
    unet2d = tiny_sd_unet2d(1)
    ldm = diffusers_unet2d_to_ldm(unet2d.state_dict(), layers_per_block=1)
    assert "input_blocks.2.0.op.weight" in ldm and "middle_block.2.in_layers.0.weight" in ldm
    video = inflate_sd21(_ldm_ckpt(tmp_path / "sd.ckpt", unet2d), model_channels=16, channel_mult=(1, 2),
                         num_res_blocks=1, attention_scales=(1.0,), head_dim=8, init_temporal_heads=2,
                         context_dim=32, image_embed_dim=None, norm_num_groups=8)
    _check_inflated_matches(video, unet2d)


def test_inflate_ldm_checkpoint_reads_geometry_from_shapes(tmp_path):
    # 3 levels, 2 res blocks each, attention on the first and last level, 5 input channels (as SD inpainting's 9)
    unet2d = tiny_sd_unet2d(2, in_channels=5, out_channels=3, block_out_channels=(16, 32, 32), layers_per_block=2,
                        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
                        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"),
                        cross_attention_dim=24, attention_head_dim=(2, 4, 4))
    ckpt = _ldm_ckpt(tmp_path / "sd.ckpt", unet2d, layers_per_block=2)
    assert infer_sd_unet_config(diffusers_unet2d_to_ldm(unet2d.state_dict(), 2)) == dict(
        in_channels=5, out_channels=3, model_channels=16, channel_mult=(1, 2, 2), num_res_blocks=2,
        attention_scales=(1.0, 0.25), context_dim=24)
    video = inflate_sd21(ckpt, head_dim=8, norm_num_groups=8, init_temporal_heads=2)
    assert video.config.head_dim == 8 and video.config.image_embed_dim == 1024  # SD 2.1 + TF-T2V's image MLP
    x = torch.randn(2, 5, 8, 8)
    t = torch.tensor([5, 600])
    ctx = torch.randn(2, 7, 24)
    with torch.no_grad():
        ref = unet2d(x, t, ctx).sample
        assert (video(x[:, :, None], t, ctx)[:, :, 0] - ref).abs().max() < 1e-4


def test_inflate_sd1_conv_projections_equal_2d_unet(tmp_path):
    unet2d = tiny_sd_unet2d(3, use_linear_projection=False)  # SD 1.x: proj_in/proj_out are 1x1 convs
    assert unet2d.down_blocks[0].attentions[0].proj_in.weight.shape == (16, 16, 1, 1)
    video = inflate_sd21(_ldm_ckpt(tmp_path / "sd1.ckpt", unet2d), head_dim=8, norm_num_groups=8,
                         image_embed_dim=None, init_temporal_heads=2)
    _check_inflated_matches(video, unet2d)


def test_inflate_inconsistent_sources_are_one_line_errors(tmp_path):
    ldm = diffusers_unet2d_to_ldm(tiny_sd_unet2d().state_dict(), layers_per_block=1)
    wide = dict(ldm, **{"output_blocks.1.0.out_layers.3.weight": torch.zeros(48, 32, 3, 3)})
    deep = diffusers_unet2d_to_ldm(tiny_sd_unet2d(transformer_layers_per_block=2).state_dict(), layers_per_block=1)
    cases = [
        (ldm, {}, ConfigError, "norm_num_groups 32 does not divide the 16-channel level 0"),
        (ldm, {"norm_num_groups": 8}, ConfigError, "head_dim 64 does not divide the 16-channel level 0"),
        # an explicit width that contradicts the file: the first conv is not padded into a crash
        (ldm, {"norm_num_groups": 8, "head_dim": 8, "model_channels": 32}, CheckpointError,
         "key input_blocks.0.0.weight has shape (16, 4, 3, 3), the model expects (32, 12, 3, 3)"),
        (wide, {"norm_num_groups": 8, "head_dim": 8}, CheckpointError, "output_blocks.1.0.out_layers.3.weight has shape"),
        (deep, {"norm_num_groups": 8, "head_dim": 8}, CheckpointError, "holds more than one transformer block"),
        ({k: v for k, v in ldm.items() if not k.startswith("middle_block")}, {}, CheckpointError,
         "key middle_block.1.transformer_blocks.0.attn2.to_k.weight is missing"),
        ({"input_blocks.0.0.weight": torch.zeros(3)}, {}, CheckpointError, "key input_blocks.1.0.in_layers.2.weight"),
    ]
    for sd, kwargs, error, message in cases:
        with pytest.raises(error, match=re.escape(message)) as err:
            inflate_sd21(sd, **kwargs)
        assert "\n" not in str(err.value)


def test_inflate_diffusers_folder_with_mixed_head_widths_is_refused(tmp_path):
    tiny_sd_unet2d(attention_head_dim=2).save_pretrained(tmp_path / "unet")  # 16/2 on level 0, 32/2 in the middle
    with pytest.raises(CheckpointError, match=r"head widths \[8, 16\] across levels"):
        inflate_sd21(tmp_path)


def test_inflate_rejects_mismatched_layout(tmp_path):
    unet2d = tiny_sd_unet2d()
    ldm = diffusers_unet2d_to_ldm(unet2d.state_dict(), layers_per_block=1)
    with pytest.raises(CheckpointError, match="does not match"):
        inflate_sd21(ldm, model_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, attention_scales=(1.0,),
                     head_dim=8, context_dim=32, image_embed_dim=None, norm_num_groups=8)
