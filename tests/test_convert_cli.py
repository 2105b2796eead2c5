"""``tft2v convert vgen|sd21`` on tiny random checkpoints written in the source layouts, then generation."""

from __future__ import annotations

import json

import av
import pytest
import torch
from pipeline_fixtures import tiny_kl_autoencoder

from tft2v.cli import main
from tft2v.convert import _AFTER_KEYS, VGEN_CONDITIONS
from tft2v.models import TFT2VUNet
from tft2v.pipeline import TFT2VPipeline

CONDITIONS = ("sketch", "depth", "masked")


def tiny_vgen_unet(conditions=()) -> TFT2VUNet:
    """VGen's layout at toy width: 32 GroupNorm groups (VGen's) and 8 condition channels (VGen's concat_dim)."""
    torch.manual_seed(0)
    return TFT2VUNet(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                     attention_scales=(1.0, 0.5), head_dim=16, init_temporal_heads=2, context_dim=32,
                     image_embed_dim=32, conditions=conditions, condition_channels=8, condition_pixel_size=(16, 32))


def ours_to_vgen(key: str) -> str:
    """Our key → the spelling VGen's checkpoints use (the inverse of tft2v.convert.vgen_key_to_ours)."""
    key = key.replace(".temporal_conv.", ".temopral_conv.")
    for ours, prefix, after in VGEN_CONDITIONS.values():
        head = f"condition_encoders.{ours}."
        if key.startswith(head + "spatial."):
            return prefix + "." + key[len(head + "spatial."):]
        for src, dst in _AFTER_KEYS.items():
            if key.startswith(head + dst + "."):
                return f"{after}.{src}{key[len(head + dst):]}"
    return key


def write_vgen_checkpoint(path, unet: TFT2VUNet):
    g = torch.Generator().manual_seed(1)
    sd = {ours_to_vgen(k): torch.randn(v.shape, generator=g) * 0.05 for k, v in unet.state_dict().items()}
    torch.save({"state_dict": sd}, path)
    return sd


def run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae") / "vae"
    tiny_kl_autoencoder().save_pretrained(path)
    return path


def test_vgen_t2v_convert_then_generate_mp4(tmp_path, vae_dir, capsys):
    sd = write_vgen_checkpoint(tmp_path / "tiny.pth", tiny_vgen_unet())
    assert any(".temopral_conv." in k for k in sd)
    out = tmp_path / "model"
    code, stdout, err = run(["convert", "vgen", str(tmp_path / "tiny.pth"), str(out), "--head-dim", "16",
                             "--resolution", "32x16", "--frames", "4", "--toy-encoder", "--vae", str(vae_dir)], capsys)
    assert code == 0, err
    assert f"wrote {out}" in stdout and "note:" not in stdout
    index = json.loads((out / "model_index.json").read_text())
    assert index["tft2v"]["height"] == 16 and index["tft2v"]["width"] == 32
    pipe = TFT2VPipeline.from_pretrained(out)
    assert pipe.scheduler.config.rescale_betas_zero_snr and pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.steps_offset == 1  # VGen DDIM timesteps 981 … 1
    loaded = pipe.unet.state_dict()
    for k, v in sd.items():
        torch.testing.assert_close(loaded[k.replace(".temopral_conv.", ".temporal_conv.")], v)

    video = tmp_path / "vgen.mp4"
    code, stdout, err = run(["generate", "--model", str(out), "a cat", "--steps", "2", "--out", str(video)], capsys)
    assert code == 0, err
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 4 and frames[0].shape == (16, 32, 3)


def test_vgen_vcomposer_layout_and_config_file(tmp_path, capsys):
    sd = write_vgen_checkpoint(tmp_path / "vc.pth", tiny_vgen_unet(CONDITIONS))
    assert "mask_embedding_after.layers.0.0.norm.weight" in sd and "depth_embedding.0.weight" in sd
    config = {"in_dim": 4, "dim": 32, "context_dim": 32, "out_dim": 4, "dim_mult": [1, 2], "num_heads": 2,
              "head_dim": 16, "num_res_blocks": 1, "attn_scales": [1, 0.5], "dropout": 0.0, "num_tokens": 4,
              "video_compositions": ["text", "mask", "depthmap", "sketch", "image"], "resolution": [32, 16]}
    (tmp_path / "cfg.yaml").write_text(json.dumps(config))  # JSON is YAML too
    out = tmp_path / "model"
    code, stdout, err = run(["convert", "vgen", str(tmp_path / "vc.pth"), str(out), "--config",
                             str(tmp_path / "cfg.yaml")], capsys)
    assert code == 0, err
    assert "note: the folder has no encoder or autoencoder yet" in stdout
    index = json.loads((out / "model_index.json").read_text())
    assert index["encoder"] == [None, None] and index["autoencoder"] == [None, None]
    unet = TFT2VUNet.from_pretrained(out / "unet")
    assert set(unet.config.conditions) == set(CONDITIONS) and tuple(unet.config.condition_pixel_size) == (16, 32)
    code, _, err = run(["generate", "--model", str(out), "a cat"], capsys)
    assert code == 2 and "missing component 'encoder'" in err and len(err.strip().splitlines()) == 1


def test_sd21_diffusers_folder_inflates(tmp_path, vae_dir, capsys):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    sd_unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=32, use_linear_projection=True)  # as SD 2.1
    sd_unet.save_pretrained(tmp_path / "sd21" / "unet")
    tiny_kl_autoencoder().vae.save_pretrained(tmp_path / "sd21" / "vae")
    out = tmp_path / "model"
    code, stdout, err = run(["convert", "sd21", str(tmp_path / "sd21"), str(out), "--toy-encoder",
                             "--prediction-type", "epsilon", "--resolution", "32x16"], capsys)
    assert code == 0, err
    pipe = TFT2VPipeline.from_pretrained(out)  # the VAE came from SRC/vae
    assert pipe.scheduler.config.prediction_type == "epsilon" and not pipe.scheduler.config.rescale_betas_zero_snr
    assert pipe.unet.config.model_channels == 32 and pipe.defaults["width"] == 32
    torch.testing.assert_close(pipe.unet.state_dict()["input_blocks.0.0.bias"], sd_unet.conv_in.bias)
