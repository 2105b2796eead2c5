"""Diffusion process on top of diffusers schedulers: VGen's schedule, offset noise, noising, targets.

Tensor layout: latents ``x0`` / ``x_t`` / targets are ``(B, C, F, H, W)``; timesteps are ``(B,)`` ints.
VGen trains with 1000 scaled-linear betas (0.00085 → 0.012) rescaled to zero terminal SNR,
v-prediction and offset noise 0.1 drawn per (sample, channel, frame) (facts §2.1–2.2). A refinement stage
trains on ``logsnr_cosine_interp``, the schedule its sampler uses (:mod:`tft2v.refine_sampler`); diffusers has no
such beta schedule, so its betas are handed to the schedulers as ``trained_betas``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from diffusers import DDIMScheduler

from tft2v.errors import ConfigError

PREDICTION_TYPES = ("v_prediction", "epsilon")
LOGSNR_SCHEDULE = "logsnr_cosine_interp"


@dataclass(frozen=True)
class ScheduleConfig:
    """The training noise schedule; defaults reproduce VGen's TF-T2V schedule."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    zero_terminal_snr: bool = True
    prediction_type: str = "v_prediction"
    offset_noise: float = 0.1

    def __post_init__(self):
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(
                f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}"
            )
        if self.offset_noise < 0:
            raise ConfigError(f"offset_noise must be >= 0, got {self.offset_noise}")
        if self.beta_schedule == LOGSNR_SCHEDULE and self.zero_terminal_snr:
            raise ConfigError(f"schedule.beta_schedule {LOGSNR_SCHEDULE!r} is not a beta schedule to rescale: "
                              "set schedule.zero_terminal_snr: false")

    def scheduler_kwargs(self) -> dict:
        """Keyword arguments every diffusers scheduler built for this schedule shares."""
        d = asdict(self)
        kwargs = {
            "num_train_timesteps": d["num_train_timesteps"],
            "beta_start": d["beta_start"],
            "beta_end": d["beta_end"],
            "beta_schedule": d["beta_schedule"],
            "rescale_betas_zero_snr": d["zero_terminal_snr"],
            "prediction_type": d["prediction_type"],
        }
        if self.beta_schedule == LOGSNR_SCHEDULE:
            kwargs["trained_betas"] = logsnr_betas(self.num_train_timesteps).tolist()
        return kwargs


def logsnr_betas(n: int) -> torch.Tensor:
    """(n,) float64 betas whose cumulative product is ``logsnr_cosine_interp``'s ᾱ (the refinement schedule)."""
    from tft2v.refine_sampler import logsnr_interp_table

    sigmas, _ = logsnr_interp_table(n)
    alphas_cumprod = 1 - sigmas.double() ** 2
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    return 1 - alphas_cumprod / previous


def build_training_scheduler(cfg: ScheduleConfig = ScheduleConfig()) -> DDIMScheduler:
    """A DDIM scheduler holding the training ᾱ; ``rescale_betas_zero_snr`` matches VGen to < 1e-6."""
    return DDIMScheduler(**cfg.scheduler_kwargs(), clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def sample_noise(
    shape: tuple[int, ...],
    offset_noise: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Gaussian noise ``(B, C, F, H, W)`` plus offset noise constant over H, W (per sample, channel, frame)."""
    noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if offset_noise > 0:
        b, c, f = shape[:3]
        offset = torch.randn((b, c, f, 1, 1), generator=generator, device=device, dtype=dtype)
        noise = noise + offset_noise * offset
    return noise


def sample_timesteps(
    batch_size: int, num_train_timesteps: int = 1000, generator: torch.Generator | None = None, device=None,
    high_noise_share: float = 0.0, high_noise_start: int = 0,
) -> torch.Tensor:
    """Integer timesteps, one per sample: (B,) int64. ``t ~ U{0, …, T−1}``; with ``high_noise_share`` p > 0,
    a sample draws from ``U{high_noise_start, …, T−1}`` instead with probability p (the uniform case draws
    exactly what it drew before the option existed)."""
    t = torch.randint(0, num_train_timesteps, (batch_size,), generator=generator, device=device)
    if high_noise_share <= 0:
        return t
    high = torch.randint(high_noise_start, num_train_timesteps, (batch_size,), generator=generator, device=device)
    pick = torch.rand(batch_size, generator=generator, device=device) < high_noise_share
    return torch.where(pick, high, t)


def add_noise(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·noise`` via the scheduler's own ``add_noise``."""
    return scheduler.add_noise(x0, noise, t)


def prediction_target(
    scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The regression target: ``noise`` (ε) or ``v = √ᾱ_t·noise − √(1−ᾱ_t)·x0``."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    raise ConfigError(f"unknown prediction_type {prediction_type!r}")


def noisy_inputs(
    scheduler,
    x0: torch.Tensor,
    cfg: ScheduleConfig,
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(x_t, t, target)`` for one training forward on ``x0`` (B, C, F, H, W); ``t`` and
    ``noise`` (offset noise included) are drawn from ``generator`` unless given."""
    if x0.ndim != 5:
        raise ValueError(f"x0 must be (B, C, F, H, W), got shape {tuple(x0.shape)}")
    if t is None:
        t = sample_timesteps(x0.shape[0], cfg.num_train_timesteps, generator, device=x0.device)
    if noise is None:
        noise = sample_noise(tuple(x0.shape), cfg.offset_noise, generator, x0.device, x0.dtype)
    x_t = add_noise(scheduler, x0, noise, t)
    return x_t, t, prediction_target(scheduler, x0, noise, t, cfg.prediction_type)
