"""The sampler of VGen's 1280x720 refinement stage (SR600): DDIM inversion, then DPM-Solver++(2M) SDE.

Layout: latents are ``(B, C, F, H, W)``; every tensor follows the latent's device and dtype.

SDEdit-style video-to-video, as VGen runs it (``shared/reference/vgen_sr600_facts.md`` §3):

* **Inversion** on the ``cosine`` schedule (diffusers' ``betas_for_alpha_bar``): DDIM steps t = 0, k, 2k, …
  (k = (t_max + 1) // steps), the last one clipped to ``t_max``, with the negative-prompt context and no
  guidance. diffusers' DDIMInverseScheduler steps a fixed stride past ``t_max`` instead, so these few lines are
  our own.
* **Sampling** on ``logsnr_cosine_interp`` (scale 2 → 4; diffusers has no such schedule): a trailing grid of
  ``steps + 1`` points from ``t_max``, whose penultimate point is dropped, in variance-exploding sigmas. The
  inverted latent is taken as unit noise (``x = z · ŝ_0``). The UNet sees the integer t and ``x / sqrt(ŝ² + 1)``;
  x̂0 uses the table at that integer t, and the solver uses the fractional sigmas. Guidance is CFG on v with
  guidance rescale (arXiv 2305.08891), both halves in one batched UNet call.

The 2M SDE update is diffusers' DPMSolverMultistepScheduler, handed x̂0 and VGen's sigmas: VGen's grid (trailing
from ``t_max``, penultimate dropped) and its integer-t x̂0 against fractional-t sigmas are not diffusers options,
so only those are computed here. The whole sampler is checked against VGen's recorded trace.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from diffusers import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar

NUM_TIMESTEPS = 1000


def cosine_table(n: int = NUM_TIMESTEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """(σ, α) float32 of the ``cosine`` schedule: ᾱ from diffusers' cosine betas, accumulated in float64."""
    alphas_cumprod = torch.cumprod(1 - betas_for_alpha_bar(n, alpha_transform_type="cosine").double(), 0)
    return torch.sqrt(1 - alphas_cumprod).float(), torch.sqrt(alphas_cumprod).float()


def logsnr_interp_table(n: int = NUM_TIMESTEPS, scale_min: float = 2.0, scale_max: float = 4.0,
                        logsnr_min: float = -15.0, logsnr_max: float = 15.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(σ, α) float32 of ``logsnr_cosine_interp``: a cosine log-SNR shifted by ``2 ln scale``, the shift moving
    from ``scale_min`` at t = 0 to ``scale_max`` at t = n − 1 (computed in float32, as VGen does)."""
    tau = torch.linspace(1, 0, n)
    lo, hi = math.atan(math.exp(-0.5 * logsnr_min)), math.atan(math.exp(-0.5 * logsnr_max))
    logsnr = -2 * torch.log(torch.tan(lo + tau * (hi - lo)))
    shifted = tau * (logsnr - 2 * math.log(scale_min)) + (1 - tau) * (logsnr - 2 * math.log(scale_max))
    sigmas = torch.sqrt(torch.sigmoid(-shifted))
    return sigmas, torch.sqrt(1 - sigmas**2)


def ve_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """Variance-exploding sigma ``σ / α`` of a VP table (inf where α = 0)."""
    return torch.sqrt(sigmas**2 / (1 - sigmas**2))


def t_to_sigma(t: torch.Tensor, table_ve: torch.Tensor) -> torch.Tensor:
    """VE sigma at fractional ``t``: log sigma interpolated linearly between the neighbouring integers."""
    log = table_ve.log()
    low, high = t.floor().long(), t.ceil().long()
    w = t - low
    return ((1 - w) * log[low] + w * log[high]).exp()


def sampler_grid(t_max: int, steps: int, table_ve: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(VE sigmas ending in 0, integer model timesteps): ``steps + 1`` trailing points from ``t_max``, the
    penultimate dropped, so ``steps`` solver steps; the last lands on σ = 0."""
    tau = torch.arange(float(t_max), -1.0, -(t_max + 1) / (steps + 1)).clamp(0, t_max)
    sigmas = torch.cat([t_to_sigma(tau, table_ve), torch.zeros(1)])
    sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas, tau[:-1].round().long()


def ddim_invert(model: Callable, z0: torch.Tensor, context: torch.Tensor, t_max: int = 699, steps: int = 30,
                table: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """DDIM inversion of ``z0`` to ``t_max``: ``model(x, t, context) -> v``; the cosine table by default."""
    sigmas, alphas = table if table is not None else cosine_table()
    sigmas, alphas = sigmas.to(z0.device), alphas.to(z0.device)
    stride = (t_max + 1) // steps
    x = z0
    for t in range(0, stride * steps + 1, stride):
        target = min(t + stride, t_max)
        v = model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long), context)
        x0 = alphas[t] * x - sigmas[t] * v
        eps = (x - alphas[t] * x0) / sigmas[t]
        x = alphas[target] * x0 + torch.sqrt(1 - alphas[target] ** 2) * eps
    return x


def guided_v(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float, rescale: float) -> torch.Tensor:
    """CFG on v, then guidance rescale: blend ``rescale`` of the guided v scaled to the conditional v's std
    (per sample, over all other axes) with ``1 − rescale`` of it unchanged."""
    guided = v_uncond + scale * (v_cond - v_uncond)
    if rescale == 0:
        return guided
    dims = tuple(range(1, guided.ndim))
    ratio = v_cond.std(dim=dims, keepdim=True) / (guided.std(dim=dims, keepdim=True) + 1e-12)
    return guided * (rescale * ratio + (1 - rescale))


def dpmpp_2m_sde(model: Callable, noise: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, t_max: int = 699,
                 steps: int = 30, guidance_scale: float = 9.0, guidance_rescale: float = 0.3,
                 noise_fn: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
                 generator: torch.Generator | None = None,
                 table: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Sample from ``noise`` (the inverted latent, taken as unit noise) to a clean latent. ``model(x, t,
    context) -> v`` gets the cond and uncond halves in one batch. ``noise_fn(i, x)`` gives step i's
    standard-normal noise (default ``randn`` from ``generator`` on x's device; VGen draws a Brownian tree).

    x̂0 comes from the integer-t table (VGen's); the update is diffusers' DPM-Solver++(2M) SDE handed that x̂0
    (``prediction_type="sample"``) on VGen's grid of fractional-t sigmas."""
    vp_sigmas, vp_alphas = table if table is not None else logsnr_interp_table()
    sigmas, model_t = sampler_grid(t_max, steps, ve_sigmas(vp_sigmas))  # float32, as VGen
    vp_sigmas, vp_alphas = vp_sigmas.to(noise.device), vp_alphas.to(noise.device)
    solver = DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2, prediction_type="sample",
                                         lower_order_final=False, euler_at_final=False, final_sigmas_type="zero")
    solver.set_timesteps(len(model_t))
    solver.sigmas, solver.timesteps = sigmas, model_t  # VGen's grid instead of diffusers' spacing
    if noise_fn is None:
        def noise_fn(i, x):
            return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    b = noise.shape[0]
    context = torch.cat([cond.expand(b, -1, -1), uncond.expand(b, -1, -1)])
    x = noise * sigmas[0] / math.sqrt(float(sigmas[0]) ** 2 + 1)  # the VP-scaled state the UNet and diffusers use
    for i, t in enumerate(model_t.tolist()):
        v = model(torch.cat([x, x]), torch.full((2 * b,), t, device=x.device, dtype=torch.long), context)
        denoised = vp_alphas[t] * x - vp_sigmas[t] * guided_v(v[:b], v[b:], guidance_scale, guidance_rescale)
        z = noise_fn(i, x) if sigmas[i + 1] > 0 else torch.zeros_like(x)  # the last step lands on x̂0: no noise
        x = solver.step(denoised, t, x, variance_noise=z).prev_sample
    return x
