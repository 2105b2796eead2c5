"""Classifier-free-guided denoising over any diffusers scheduler.

Tensor layout: latents are ``(B, C, F, H, W)``. The model is any callable
``model_fn(x_t, t, encoder_hidden_states=..., image_embeds=..., conditions=...) -> prediction``.
"""

from __future__ import annotations

import inspect
from typing import Callable

import diffusers
import torch

from tft2v.diffusion import ScheduleConfig
from tft2v.errors import ConfigError

SCHEDULER_ALIASES = {"ddim": "DDIMScheduler", "dpmpp": "DPMSolverMultistepScheduler", "lcm": "LCMScheduler"}

# Each alias carries the settings that make it behave as intended on a zero-terminal-SNR schedule.
_ALIAS_KWARGS = {
    # VGen's DDIM: timesteps 981, 961, …, 1 (stride T/steps, offset 1); the last step lands on ᾱ_0.
    "ddim": {"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "leading"},
    # DPM-Solver++(2M); trailing spacing starts at t = T−1, the zero-SNR-consistent choice.
    "dpmpp": {
        "algorithm_type": "dpmsolver++",
        "solver_order": 2,
        "timestep_spacing": "trailing",
        "final_sigmas_type": "zero",
    },
    # A consistency-distilled model (tft2v distill, VGen's VideoLCM): 1–8 steps on the teacher's 50-point grid
    # 19 … 999, each step the model's x0 through LCM's boundary scalings, then re-noised.
    "lcm": {"clip_sample": False, "original_inference_steps": 50, "timestep_scaling": 10.0},
}


def build_scheduler(name: str = "ddim", schedule: ScheduleConfig = ScheduleConfig(), **overrides):
    """A diffusers scheduler for sampling: ``ddim`` (VGen), ``dpmpp``, ``lcm`` (distilled models) or any
    diffusers class name."""
    cls_name = SCHEDULER_ALIASES.get(name, name)
    cls = getattr(diffusers, cls_name, None)
    if cls is None or not isinstance(cls, type) or not cls_name.endswith("Scheduler"):
        raise ConfigError(
            f"unknown scheduler {name!r}; use 'ddim', 'dpmpp' or a diffusers scheduler class name"
        )
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in schedule.scheduler_kwargs().items() if k in accepted}
    if schedule.zero_terminal_snr and "rescale_betas_zero_snr" not in accepted:
        raise ConfigError(f"scheduler {cls_name} cannot reproduce a zero-terminal-SNR schedule")
    kwargs.update({k: v for k, v in _ALIAS_KWARGS.get(name, {}).items() if k in accepted})
    if name not in _ALIAS_KWARGS and "timestep_spacing" in accepted:
        kwargs["timestep_spacing"] = "trailing"
    kwargs.update(overrides)
    return cls(**kwargs)


def _batchable(cond: dict, uncond: dict) -> bool:
    """Cond and uncond can share one forward when they carry the same kinds of tensors."""
    if cond.keys() != uncond.keys():
        return False
    for k in cond:
        a, b = cond[k], uncond[k]
        if (a is None) != (b is None):
            return False
        if isinstance(a, dict):
            if a.keys() != b.keys() or any(a[n].shape[1:] != b[n].shape[1:] for n in a):
                return False
        elif a is not None and a.shape[1:] != b.shape[1:]:
            return False
    return True


def _cat(uncond: dict, cond: dict) -> dict:
    out = {}
    for k, a in cond.items():
        b = uncond[k]
        if a is None:
            out[k] = None
        elif isinstance(a, dict):
            out[k] = {n: torch.cat([b[n], a[n]]) for n in a}
        else:
            out[k] = torch.cat([b, a])
    return out


def guided_prediction(
    model_fn: Callable, x: torch.Tensor, t: torch.Tensor, cond: dict, uncond: dict | None, guidance_scale: float
) -> torch.Tensor:
    """``u + s·(c − u)``; cond and uncond run as ONE batched forward whenever their inputs line up."""
    if uncond is None or guidance_scale == 1.0:
        return model_fn(x, t.expand(x.shape[0]), **cond)
    b = x.shape[0]
    if _batchable(cond, uncond):
        out = model_fn(torch.cat([x, x]), t.expand(2 * b), **_cat(uncond, cond))
        u, c = out[:b], out[b:]
    else:
        u = model_fn(x, t.expand(b), **uncond)
        c = model_fn(x, t.expand(b), **cond)
    return u + guidance_scale * (c - u)


@torch.no_grad()
def denoise(
    model_fn: Callable,
    scheduler,
    latents: torch.Tensor,
    cond: dict,
    uncond: dict | None = None,
    guidance_scale: float = 9.0,
    num_inference_steps: int = 50,
    generator: torch.Generator | None = None,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run the reverse process from ``latents`` (B, C, F, H, W), unit Gaussian noise (scaled here by the
    scheduler's ``init_noise_sigma``), and return the final latents.

    ``cond``/``uncond`` hold the model's keyword inputs; the negative prompt is the uncond text.
    """
    if latents.ndim != 5:
        raise ValueError(f"latents must be (B, C, F, H, W), got shape {tuple(latents.shape)}")
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    x = latents * scheduler.init_noise_sigma
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        x_in = scheduler.scale_model_input(x, t)
        pred = guided_prediction(model_fn, x_in, t.reshape(1).to(latents.device), cond, uncond, guidance_scale)
        x = scheduler.step(pred.to(x.dtype), t, x, **step_kwargs).prev_sample
        if callback is not None:
            callback(i, len(timesteps), x)
    return x
