"""Input checking and the small per-step helpers of :meth:`tft2v.pipeline.TFT2VPipeline.__call__`.

Layout: videos and condition videos are ``(B, C, F, H, W)``, images ``(B, 3, H, W)`` in [-1, 1];
``postprocess`` produces the I/O edge layout ``(B, F, H, W, 3)``. Every bad input is a one-line
:class:`~tft2v.errors.TFT2VError` naming the argument.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tft2v.errors import TFT2VError

OUTPUT_TYPES = ("np", "pt", "uint8")


@dataclass(frozen=True)
class CallArgs:
    """Validated ``__call__`` arguments; ``batch`` = len(prompts) · num_videos_per_prompt."""

    prompts: list[str]
    negatives: list[str]
    num_videos_per_prompt: int
    num_frames: int
    height: int
    width: int
    steps: int
    guidance_scale: float
    output_type: str
    decode_chunk_size: int

    @property
    def batch(self) -> int:
        return len(self.prompts) * self.num_videos_per_prompt


def _positive_int(value, name: str) -> int:
    """``value`` as an int; numpy integers pass, bools and floats (even 2.0) do not."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise TFT2VError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def spatial_stride(pipe) -> int:
    """Height/width must be multiples of this: the autoencoder factor times the UNet's downsampling."""
    return unet_stride(pipe.unet, pipe.autoencoder)


def unet_stride(unet, autoencoder) -> int:
    """The pixel multiple a UNet (behind ``autoencoder``) takes: the autoencoder factor times its downsampling."""
    return autoencoder.spatial_factor * 2 ** (len(unet.config.channel_mult) - 1)


def check_call(pipe, prompt, negative_prompt, num_frames, height, width, steps, guidance_scale, output_type,
               num_videos_per_prompt, decode_chunk_size, generator) -> CallArgs:
    """Validate everything ``__call__`` got before any heavy work starts."""
    if pipe.is_refiner:
        raise TFT2VError("this model is a refinement stage: it refines an existing video and does not generate "
                         "from noise; use TFT2VRefinePipeline or `tft2v refine`")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise TFT2VError("prompt must be a string or a non-empty list of strings")
    negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else negative_prompt
    if not isinstance(negatives, (list, tuple)) or not all(isinstance(p, str) for p in negatives):
        raise TFT2VError("negative_prompt must be a string or a list of strings")
    if len(negatives) != len(prompts):
        raise TFT2VError(f"got {len(negatives)} negative prompts for {len(prompts)} prompts")
    stride = spatial_stride(pipe)
    height, width = _positive_int(height, "height"), _positive_int(width, "width")
    for name, value in (("height", height), ("width", width)):
        if value % stride:
            raise TFT2VError(f"{name} {value} must be a multiple of {stride} for this model "
                             f"(autoencoder factor {pipe.autoencoder.spatial_factor} × UNet downsampling)")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real) \
            or not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise TFT2VError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
    steps = _positive_int(steps, "num_inference_steps")
    # The schedulers index their training timesteps; more sampling steps than those is a crash inside them.
    max_steps = pipe.scheduler.config.num_train_timesteps
    if steps > max_steps:
        raise TFT2VError(f"num_inference_steps {steps} exceeds the scheduler's {max_steps} training timesteps")
    grid = pipe.scheduler.config.get("original_inference_steps")
    if type(pipe.scheduler).__name__ == "LCMScheduler" and steps > grid:
        raise TFT2VError(f"num_inference_steps {steps} exceeds this distilled model's {grid}-step consistency grid "
                         f"(it samples in 1-8 steps)")
    if output_type not in OUTPUT_TYPES:
        raise TFT2VError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    args = CallArgs(list(prompts), list(negatives), _positive_int(num_videos_per_prompt, "num_videos_per_prompt"),
                    _positive_int(num_frames, "num_frames"), height, width,
                    steps, float(guidance_scale), output_type,
                    _positive_int(decode_chunk_size, "decode_chunk_size"))
    if isinstance(generator, list) and len(generator) != args.batch:
        raise TFT2VError(f"got {len(generator)} generators for {args.batch} videos; pass one, or one per video")
    return args


def guidance_input(pipe, w, batch: int, device) -> torch.Tensor | None:
    """(batch,) CFG weights for a UNet with a guidance embedding (a distilled student that learnt w), else None."""
    if not pipe.unet.config.get("guidance_embed"):
        if w is not None:
            raise TFT2VError("guidance_w is for a distilled model with a guidance embedding; this model has none "
                             "(use guidance_scale)")
        return None
    if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w) or w < 0:
        raise TFT2VError(f"guidance_w must be a finite number >= 0 for this distilled model, got {w!r}")
    return torch.full((batch,), float(w), device=device)


def encode_prompts(encoder, args: CallArgs, positive_prompt: str, use_cfg: bool):
    """Text tokens for prompts (+ the positive suffix) and negatives, each (batch, L, D) float32."""
    def encode(texts):
        tokens = encoder.encode_text(list(texts)).float()  # (P, L, D)
        return tokens.repeat_interleave(args.num_videos_per_prompt, dim=0)  # (P·N, L, D)

    text = encode([p + positive_prompt for p in args.prompts])
    return text, (encode(args.negatives) if use_cfg else None)


def encode_image(pipe, image, batch: int) -> torch.Tensor:
    """image (3, H, W) or (1 | batch, 3, H, W) in [-1, 1] → CLIP embedding (batch, D) float32."""
    embed_dim = pipe.unet.config.image_embed_dim
    if not embed_dim:
        raise TFT2VError("this model has no image tokens (image_embed_dim is None); generate without an image")
    if getattr(pipe.encoder, "image_dim", None) != embed_dim:
        raise TFT2VError(f"the encoder's image embedding ({pipe.encoder.image_dim}) does not match the UNet's "
                         f"image_embed_dim {embed_dim}")
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4) or image.shape[-3] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise TFT2VError(f"image must be a (3, H, W) or (B, 3, H, W) tensor in [-1, 1], got {shape}")
    image = image[None] if image.ndim == 3 else image
    embeds = pipe.encoder.encode_image(image.to(pipe.encoder.device, torch.float32)).float()  # (b, D)
    return _to_batch(embeds, batch, "image")


def _to_batch(x: torch.Tensor, batch: int, what: str, per_prompt: int | None = None) -> torch.Tensor:
    """Broadcast a leading dim of 1 (or of per-prompt size) to ``batch``."""
    if x.shape[0] == batch:
        return x
    if x.shape[0] == 1:
        return x.expand(batch, *x.shape[1:])
    if per_prompt and x.shape[0] * per_prompt == batch:
        return x.repeat_interleave(per_prompt, dim=0)
    raise TFT2VError(f"{what} has batch size {x.shape[0]}; expected 1 or {batch}")


def prepare_conditions(pipe, conditions, condition_videos, depth_model, args: CallArgs):
    """Merge ready condition videos and ones extracted from raw videos → {name: (batch, c, F, H, W)}."""
    from tft2v.models import CONDITION_CHANNELS

    conditions = dict(conditions or {})
    if not conditions and not condition_videos:
        return {}
    supported = sorted(pipe.unet.config.conditions)
    for name in list(conditions) + list(condition_videos or {}):
        if name not in CONDITION_CHANNELS:
            raise TFT2VError(f"unknown condition {name!r}; known: {sorted(CONDITION_CHANNELS)}")
        if name not in supported:
            raise TFT2VError(f"this model was not trained with the {name!r} condition; it supports {supported or 'none'}")
    for name, video in (condition_videos or {}).items():
        conditions[name] = extract_condition(video, name, args, depth_model)
    cond_h, cond_w = pipe.unet.config.condition_pixel_size
    factor = pipe.autoencoder.spatial_factor
    need = (cond_h // 8 * factor, cond_w // 8 * factor)
    if (args.height, args.width) != need:
        raise TFT2VError(f"with conditions this model generates {need[0]}x{need[1]} (HxW) videos only "
                         f"(its condition_pixel_size is {cond_h}x{cond_w}); got {args.height}x{args.width}")
    out = {}
    for name, cond in conditions.items():
        c = CONDITION_CHANNELS[name]
        if not isinstance(cond, torch.Tensor) or cond.ndim != 5 or cond.shape[1] != c or cond.shape[2] != args.num_frames:
            shape = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
            raise TFT2VError(f"condition {name!r} must be (B, {c}, F={args.num_frames}, H, W), got {shape}")
        out[name] = _to_batch(cond.float(), args.batch, f"condition {name!r}", args.num_videos_per_prompt)
    return out


def extract_condition(video, name: str, args: CallArgs, depth_model=None) -> torch.Tensor:
    """Raw video (b, 3, F, H, W) in [-1, 1] → the named condition at the output size, with the training
    extractors. Masks for "masked" come from the extractor's fixed default seed, so they are reproducible
    and do not consume the noise generator."""
    from tft2v.data.conditions import extract_conditions

    if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[1] != 3:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise TFT2VError(f"the video for condition {name!r} must be (B, 3, F, H, W) in [-1, 1], got {shape}")
    if video.shape[2] != args.num_frames:
        raise TFT2VError(f"the video for condition {name!r} has {video.shape[2]} frames; expected {args.num_frames}")
    video = video.float().cpu()
    if video.shape[-2:] != (args.height, args.width):
        b, _, f = video.shape[:3]
        flat = F.interpolate(video.transpose(1, 2).reshape(b * f, 3, *video.shape[-2:]),
                             size=(args.height, args.width), mode="bilinear", antialias=True, align_corners=False)
        video = flat.reshape(b, f, 3, args.height, args.width).transpose(1, 2)  # (b, 3, F, H, W)
    return extract_conditions(video.clamp(-1, 1), [name], depth_model=depth_model)[name]


def prepare_latents(pipe, args: CallArgs, generator, latents, device) -> torch.Tensor:
    """Initial noise (batch, C, F, H/f, W/f) float32, N(0, I) as VGen samples it (no offset noise)."""
    from diffusers.utils.torch_utils import randn_tensor

    factor = pipe.autoencoder.spatial_factor
    shape = (args.batch, pipe.unet.config.in_channels, args.num_frames, args.height // factor, args.width // factor)
    if latents is not None:
        if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape:
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise TFT2VError(f"latents must have shape {shape}, got {got}")
        return latents.to(device=device, dtype=torch.float32)
    return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)


def postprocess(video: torch.Tensor, output_type: str):
    """video (B, 3, F, H, W) → "pt" same in [-1, 1]; "np" float32 (B, F, H, W, 3) in [0, 1]; "uint8"."""
    video = video.float().clamp(-1, 1)
    if output_type == "pt":
        return video
    frames = ((video + 1) / 2).permute(0, 2, 3, 4, 1).cpu()  # (B, F, H, W, 3)
    if output_type == "uint8":
        return (frames * 255).round().to(torch.uint8).numpy()
    return frames.numpy()
