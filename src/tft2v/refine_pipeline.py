"""Video-to-video refinement with a refinement UNet (VGen's 1280x720 SR600 stage), diffusers-style.

Layout: videos are ``(B, 3, F, H, W)`` in [-1, 1]; latents ``(B, C, F, h, w)``.

The low-resolution video is resized (bilinear, as VGen) to the target size, VAE-encoded (a posterior sample
from ``generator``), inverted with DDIM up to ``t = strength · 1000 − 1`` under the negative prompt, and
sampled back with DPM-Solver++(2M) SDE under CFG and guidance rescale (:mod:`tft2v.refine_sampler`). The
refiner takes 32 frames; a 16-frame clip is doubled frame by frame (f0 f0 f1 f1 …) and halved after, as VGen.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from tft2v.errors import TFT2VError
from tft2v.pipeline import TFT2VPipeline
from tft2v.pipeline_inputs import postprocess
from tft2v.refine_sampler import NUM_TIMESTEPS, ddim_invert, dpmpp_2m_sde

MAX_T = NUM_TIMESTEPS - 2  # the sampler's table has infinite VE noise at the last step


def strength_to_t(strength: float, steps: int) -> int:
    """The timestep inversion reaches for ``strength`` in (0, 1] (0.7 → 699, VGen's); one-line errors."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 < strength <= 1:
        raise TFT2VError(f"strength must be in (0, 1], got {strength!r}")
    t_max = min(round(strength * NUM_TIMESTEPS) - 1, MAX_T)
    if t_max + 1 < steps:
        raise TFT2VError(f"strength {strength} reaches t = {t_max}: too few timesteps for {steps} steps")
    return t_max


def frame_plan(num_frames: int, refiner_frames: int, what: str) -> bool:
    """Whether a clip of ``num_frames`` is doubled for a refiner taking ``refiner_frames`` (VGen: 16 → 32);
    any other length is a one-line error naming ``what``."""
    if num_frames == refiner_frames or 2 * num_frames == refiner_frames:
        return num_frames != refiner_frames
    raise TFT2VError(f"{what} has {num_frames} frames; this refiner takes {refiner_frames} "
                     f"(or {refiner_frames // 2}, doubled)")


class TFT2VRefinePipeline(TFT2VPipeline):
    """A refinement model folder (``tft2v convert vgen sr_step_110000_ema.pth``): refines a given video."""

    def __call__(self, video: torch.Tensor, prompt: str | list[str], negative_prompt: str | None = None,
                 strength: float = 0.7, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 30, guidance_scale: float = 9.0, guidance_rescale: float = 0.3,
                 generator: torch.Generator | None = None, output_type: str = "np", double_frames: bool = False,
                 decode_chunk_size: int | None = None, noise_fn=None, image_tokens: bool = True):
        """Refine ``video`` (B, 3, F, H, W) in [-1, 1] to ``height × width`` (default: the folder's).
        ``double_frames``: repeat each frame before and keep every other one after (VGen's 16 → 32).
        ``noise_fn(i, x)``: the SDE noise of step i (default randn from ``generator``). ``image_tokens``: where
        the refiner has an image-token MLP (a stage trained with the motion branch; VGen's SR600 has none), the
        conditional half also sees the image tokens of the resized input's middle frame, as the motion branch
        trains; the unconditional half (and the inversion) has them dropped, as training's image-token dropout
        does. Returns the
        ``output_type`` of :meth:`TFT2VPipeline.__call__`."""
        if not self.is_refiner:
            raise TFT2VError("this model is not a refinement stage; use TFT2VPipeline to generate")
        if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[1] != 3:
            raise TFT2VError(f"video must be a (B, 3, F, H, W) tensor in [-1, 1], got {getattr(video, 'shape', video)}")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise TFT2VError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        if guidance_scale < 0 or not 0 <= guidance_rescale <= 1:
            raise TFT2VError(f"guidance_scale must be >= 0 and guidance_rescale in [0, 1], got {guidance_scale}, "
                             f"{guidance_rescale}")
        t_max = strength_to_t(strength, num_inference_steps)
        height, width = height or self.defaults["height"], width or self.defaults["width"]
        factor = self.autoencoder.spatial_factor
        try:
            if height % factor or width % factor:
                raise ValueError(f"not a multiple of the autoencoder factor {factor}")
            self.unet.check_latent_size(height // factor, width // factor)
        except ValueError as e:
            raise TFT2VError(f"size {height}x{width} does not fit this refiner: {e}") from None
        prompts = [prompt] * video.shape[0] if isinstance(prompt, str) else list(prompt)
        if len(prompts) != video.shape[0]:
            raise TFT2VError(f"got {len(prompts)} prompts for {video.shape[0]} videos")
        negative = self.defaults["negative_prompt"] if negative_prompt is None else negative_prompt
        device = self.execution_device
        chunk = self.vae_decode_chunk_size if decode_chunk_size is None else decode_chunk_size

        if double_frames:
            video = video.repeat_interleave(2, dim=2)
        b, _, f = video.shape[:3]
        frames = video.transpose(1, 2).reshape(b * f, 3, *video.shape[-2:]).to(device, torch.float32)
        frames = F.interpolate(frames, size=(height, width), mode="bilinear", align_corners=False)
        video = frames.reshape(b, f, 3, height, width).transpose(1, 2)
        with self._placed(self.autoencoder):
            latents = self.autoencoder.encode(video, generator=generator, chunk_size=chunk).to(device)
        with self._placed(self.encoder):
            cond = self.encoder.encode_text([p + self.defaults["positive_prompt"] for p in prompts]).float().to(device)
            uncond = self.encoder.encode_text([negative] * b).float().to(device)
            image = self._image_tokens(video) if image_tokens else None
        dtype = next(self.unet.parameters()).dtype

        def model(x, t, context):  # through _model_fn: enable_unet_batch_chunking splits the CFG batch
            inputs = {"encoder_hidden_states": context.to(dtype)}
            if image is not None:  # inversion runs the uncond half alone (b samples), sampling cond + uncond (2b)
                keep = torch.arange(x.shape[0], device=x.device) < (b if x.shape[0] == 2 * b else 0)
                inputs["image_embeds"] = image.repeat(x.shape[0] // b, 1).to(dtype)
                inputs["dropout_masks"] = {"image": keep}
            return self._model_fn(x.to(dtype), t, **inputs).float()

        with self._placed(self.unet), torch.no_grad():
            inverted = ddim_invert(model, latents, uncond, t_max, num_inference_steps)
            refined = dpmpp_2m_sde(model, inverted, cond, uncond, t_max, num_inference_steps, guidance_scale,
                                   guidance_rescale, noise_fn=noise_fn, generator=generator)
        if double_frames:
            refined = refined[:, :, ::2]
        with self._placed(self.autoencoder):
            out = self.autoencoder.decode(refined, chunk_size=chunk)
        return postprocess(out, output_type)

    def _image_tokens(self, video: torch.Tensor) -> torch.Tensor | None:
        """(B, D_img): the image embeddings of the middle frame of ``video`` (B, 3, F, H, W); None when the UNet
        or the encoder has no image path."""
        if not self.unet.config.get("image_embed_dim") or not getattr(self.encoder, "image_dim", None):
            return None
        return self.encoder.encode_image(video[:, :, video.shape[2] // 2]).float().to(self.execution_device)
