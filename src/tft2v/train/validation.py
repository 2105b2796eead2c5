"""Validation videos during training and the final export to the pipeline's model folder.

Validation samples ``(B, C, F, h, w)`` latents for fixed prompts with CFG (negative prompt as the
unconditional branch) through :func:`tft2v.sampling.denoise`, decodes them to (B, 3, F, H, W) pixels
in [-1, 1] and writes one file per prompt (mp4 via :func:`tft2v.export_video`; a PNG grid of the
frames when the video writer is unavailable). Noise is seeded from the run seed, so the videos of
successive validations differ only by the weights. With EMA on, those weights are the EMA weights
(:func:`tft2v.train.checkpoint.ema_weights`), the ones the exported model folder carries (a LoRA run's:
its adapter on a reference to the base, :mod:`tft2v.train.lora_checkpoint`). Every rank
takes part (:func:`sampling_unet`): under FSDP the full weights are gathered, then the main process
samples alone with a full copy.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from tft2v.config import Config, config_from_dict
from tft2v.errors import TFT2VError


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:48] or "empty"


@contextmanager
def sampling_unet(accelerator, model, unet, ema=None, params=None):
    """Collective (every rank enters): yields, on the main process, a UNet holding the full weights —
    the EMA ones when ``ema`` is given — and None on the other ranks.

    Unsharded (single process, DDP) that is ``unet`` itself with the EMA weights swapped in (and back
    out on exit, bit-exactly). Under FSDP2 every rank swaps its EMA shards in, the full weights are
    gathered onto the main process and loaded into a copy of the UNet built from its config (on the
    meta device first, so building it draws nothing from the global RNG that training dropout uses);
    a LoRA run's copy gets the gathered adapter too.
    """
    from tft2v.models.lora import adapter_state, copy_adapter
    from tft2v.train.checkpoint import ema_weights, is_fsdp2, plain_copy

    main = accelerator.is_main_process
    if not is_fsdp2(accelerator):
        if not main:
            yield None
            return
        with ema_weights(ema, params):
            yield unet
        return
    lora = getattr(unet, "_tft2v_lora", None) is not None
    with ema_weights(ema, params):
        weights = accelerator.get_state_dict(model)  # gathered: {} off the main process; a LoRA run's: the base
        adapter = adapter_state(unet) if lora else None  # gathered on every rank
    if not main:
        yield None
        return
    copy = plain_copy(unet, weights)
    if lora:
        copy_adapter(unet, copy, adapter)
    yield copy.to(accelerator.device).eval()


@torch.no_grad()
def sample_validation_clips(unet, encoder, autoencoder, cfg: Config) -> torch.Tensor:
    """One clip per ``train.validation_prompts`` entry as (n, 3, F, H, W) in [-1, 1], on the CPU."""
    from tft2v.sampling import build_scheduler, denoise

    t = cfg.train
    prompts = list(t.validation_prompts)
    device = next(unet.parameters()).device
    n = len(prompts)
    h = cfg.data.height // autoencoder.spatial_factor
    w = cfg.data.width // autoencoder.spatial_factor
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    latents = torch.randn((n, autoencoder.latent_channels, t.validation_frames, h, w), generator=generator,
                          device=device)
    text = encoder.encode_text(prompts).float().to(device)  # (n, L, D)
    negative = encoder.encode_text([cfg.recipe.negative_prompt] * n).float().to(device)
    was_training = unet.training
    unet.eval()
    try:
        x = denoise(unet, build_scheduler("ddim", cfg.schedule), latents, {"encoder_hidden_states": text},
                    {"encoder_hidden_states": negative}, t.guidance_scale, t.validation_steps, generator)
    finally:
        unet.train(was_training)
    return autoencoder.decode(x).clamp(-1, 1).cpu()  # (n, 3, F, H, W)


def lcm_scheduler(cfg: Config):
    """The sampler of a model distilled per ``cfg.distill``: diffusers' LCMScheduler on its teacher's grid."""
    from tft2v.sampling import build_scheduler

    d = cfg.distill
    return build_scheduler("lcm", cfg.schedule, original_inference_steps=d.ddim_steps,
                           timestep_scaling=d.timestep_scaling)


@torch.no_grad()
def sample_few_step_clips(unet, encoder, autoencoder, cfg: Config, steps: int) -> torch.Tensor:
    """One clip per ``train.validation_prompts`` entry from a distilled ``unet`` in ``steps`` LCM steps, one
    UNet call each (no CFG pass): (n, 3, F, H, W) in [-1, 1] on the CPU; the noise is the one
    :func:`sample_validation_clips` draws."""
    from tft2v.sampling import denoise

    t = cfg.train
    prompts = list(t.validation_prompts)
    device = next(unet.parameters()).device
    h, w = cfg.data.height // autoencoder.spatial_factor, cfg.data.width // autoencoder.spatial_factor
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    latents = torch.randn((len(prompts), autoencoder.latent_channels, t.validation_frames, h, w),
                          generator=generator, device=device)
    cond = {"encoder_hidden_states": encoder.encode_text(prompts).float().to(device)}
    if unet.config.get("guidance_embed"):
        cond["guidance"] = torch.full((len(prompts),), distilled_guidance_w(cfg), device=device)
    was_training = unet.training
    unet.eval()
    try:
        x = denoise(unet, lcm_scheduler(cfg), latents, cond, None, 1.0, steps, generator)
    finally:
        unet.train(was_training)
    return autoencoder.decode(x).clamp(-1, 1).cpu()  # (n, 3, F, H, W)


def distilled_guidance_w(cfg: Config) -> float:
    """The w a student that learnt a guidance embedding is asked for by default: the middle of its range."""
    lo, hi = cfg.distill.guidance_w_range
    return (lo + hi) / 2


def write_clips(video: torch.Tensor, prompts: list[str], out_dir: Path, fps: float, suffix: str = "") -> list[Path]:
    """``video`` (n, 3, F, H, W) in [-1, 1] → one file per prompt in ``out_dir`` (``NN_<prompt><suffix>.mp4``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [_write_clip(video[i], out_dir / f"{i:02d}_{_slug(p)}{suffix}", fps) for i, p in enumerate(prompts)]


def validation_videos(unet, encoder, autoencoder, cfg: Config, step: int, out_dir: str | Path) -> list[Path]:
    """Sample one clip per ``train.validation_prompts`` entry; returns the written paths."""
    prompts = list(cfg.train.validation_prompts)
    if not prompts:
        return []
    video = sample_validation_clips(unet, encoder, autoencoder, cfg)  # (n, 3, F, H, W)
    return write_clips(video, prompts, Path(out_dir) / f"step-{step:08d}", cfg.data.fps)


def _write_clip(clip: torch.Tensor, stem: Path, fps: float) -> Path:
    """clip (3, F, H, W) in [-1, 1] → ``stem.mp4`` (or ``stem.png``, all frames side by side)."""
    try:
        from tft2v.video_export import export_video
    except ImportError:  # the video writer lands separately; a frame strip still shows progress
        from PIL import Image

        frames = ((clip.permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()  # (F, H, W, 3)
        path = stem.with_suffix(".png")
        Image.fromarray(np.concatenate(list(frames), axis=1)).save(path)
        return path
    return Path(export_video(clip, stem.with_suffix(".mp4"), fps=fps))


def export_model_folder(run_dir_or_ckpt: str | Path, out_dir: str | Path, ema: bool = True, base_unet=None,
                        fused_dir: str | Path | None = None, encoder=None, autoencoder=None) -> Path:
    """Write the diffusers-style model folder the pipeline loads from a run (its newest checkpoint)
    or a checkpoint folder; uses the EMA weights when the checkpoint has them and ``ema`` is set. A LoRA
    run's checkpoint gives a folder with its adapter and a reference to the base, ``base_unet`` (a plain UNet
    holding the base) written into it where given; ``fused_dir``: also the adapter merged into the base
    (:func:`tft2v.train.lora_checkpoint.export_model`). ``encoder`` / ``autoencoder``: the run's own (a distilled
    teacher's) instead of ones built from the config. A distillation run's folder is few-step: LCMScheduler,
    ``distill.sample_steps`` steps and guidance scale 1 (no CFG pass) by default."""
    import yaml

    from tft2v.models import TFT2VUNet
    from tft2v.pipeline import TFT2VPipeline
    from tft2v.sampling import build_scheduler
    from tft2v.train import lora_checkpoint
    from tft2v.train.checkpoint import resolve_resume
    from tft2v.train.data import build_autoencoder_from_config, build_encoder_from_config

    ckpt = resolve_resume(str(run_dir_or_ckpt), run_dir_or_ckpt)
    if ckpt is None:
        raise TFT2VError(f"no checkpoint found in {run_dir_or_ckpt}")
    cfg = config_from_dict(yaml.safe_load((ckpt / "config.yaml").read_text()))
    defaults = {"num_frames": cfg.data.num_frames, "height": cfg.data.height, "width": cfg.data.width,
                "fps": cfg.data.fps, "negative_prompt": cfg.recipe.negative_prompt,
                "guidance_scale": cfg.train.guidance_scale, "num_inference_steps": 50,
                "stage": "refine" if cfg.recipe.refine.enabled else "generate"}
    scheduler = build_scheduler("ddim", cfg.schedule)
    if cfg.distill.teacher:
        scheduler = lcm_scheduler(cfg)
        defaults.update(guidance_scale=1.0, num_inference_steps=cfg.distill.sample_steps)
        if cfg.distill.learns_guidance:
            defaults["guidance_w"] = distilled_guidance_w(cfg)
    parts = {"scheduler": scheduler, "encoder": encoder or build_encoder_from_config(cfg),
             "autoencoder": autoencoder or build_autoencoder_from_config(cfg)}
    if lora_checkpoint.is_adapter_only(ckpt):
        return lora_checkpoint.export_model(ckpt, out_dir, **parts, defaults=defaults, ema=ema, base_unet=base_unet,
                                            fused_dir=fused_dir)
    if fused_dir is not None:
        raise TFT2VError(f"checkpoint {ckpt} holds no LoRA adapter to fuse")
    weights = ckpt / ("unet_ema" if ema and (ckpt / "unet_ema").is_dir() else "unet")
    pipe = TFT2VPipeline(TFT2VUNet.from_pretrained(weights), **parts, defaults=defaults)
    pipe.save_pretrained(out_dir)
    return Path(out_dir)
