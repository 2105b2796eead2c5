"""The refinement stage's training inputs (``recipe.refine``): degraded input, full-resolution target.

Layout: pixels ``(B, 3, F, H, W)`` in [-1, 1]; latents ``(B, C, F, h, w)``.

A clip is degraded to the base model's resolution (antialiased bilinear) and resized back (bilinear, as the
refine pipeline resizes its input), both versions are encoded, and t is drawn from [0, strength·T). The model
sees the degraded latent shifted towards the clean one as t falls,

    x_t = α_t · (z + η_t · (z_low − z)) + σ_t · ε,   η_t = min(σ_t² / σ_max², 1),

with σ_max the noise level at strength·T, and the target is the clean latent z in the model's prediction space
(the effective noise ε' = (x_t − α_t z) / σ_t). At the top of the range this is the SDEdit start, the degraded
clip under noise; towards t = 0 it is the sampler's own situation, a near-clean estimate. A plain degraded input
at every t would ask the model for ε' ∝ (z_low − z) / σ_t, unbounded as σ_t → 0; with η_t ∝ σ_t² the shift is
at most α_t σ_t / σ_max² times the residual (the residual shifting of ResShift, Yue et al. 2023, in a VP schedule).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tft2v.config import RefineConfig


def base_size(refine: RefineConfig, data_height: int, data_width: int, height: int, width: int) -> tuple[int, int]:
    """The degraded size of an ``height × width`` clip: the base resolution scaled like the clip (buckets)."""
    return (max(1, round(height * refine.base_height / data_height)),
            max(1, round(width * refine.base_width / data_width)))


def degrade(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``pixels`` (B, 3, F, H, W) down to ``size`` (antialiased) and back up to H × W (bilinear)."""
    b, c, f, h, w = pixels.shape
    frames = pixels.transpose(1, 2).reshape(b * f, c, h, w)
    low = F.interpolate(frames, size=size, mode="bilinear", antialias=True, align_corners=False)
    up = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return up.reshape(b, f, c, h, w).transpose(1, 2).clamp(-1, 1)


def max_timestep(refine: RefineConfig, num_train_timesteps: int) -> int:
    """Exclusive upper bound of the training t: ``round(strength · T)``."""
    return max(1, round(refine.strength * num_train_timesteps))


def shifted_inputs(alphas_cumprod: torch.Tensor, z: torch.Tensor, z_low: torch.Tensor, noise: torch.Tensor,
                   t: torch.Tensor, t_end: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_t, effective noise ε')`` for clean ``z`` and degraded ``z_low`` (B, C, F, h, w) at ``t`` (B,)."""
    a = alphas_cumprod.to(z.device, torch.float64)
    alpha2 = a[t].view(-1, *[1] * (z.ndim - 1))
    sigma2 = 1 - alpha2
    eta = (sigma2 / (1 - a[t_end - 1])).clamp(max=1.0)
    alpha, sigma = alpha2.sqrt(), sigma2.sqrt()
    residual = (z_low - z).double()
    x_t = alpha * (z.double() + eta * residual) + sigma * noise.double()
    effective = noise.double() + alpha * eta * residual / sigma
    return x_t.to(z.dtype), effective.to(z.dtype)
