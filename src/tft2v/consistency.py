"""Latent consistency distillation (LCM / VGen's VideoLCM) as pure functions of tensors, and its config.

Tensor layout: latents ``x`` and predictions are ``(B, C, F, H, W)``; timesteps and per-sample scalars
are ``(B,)``. The distillation step (:mod:`tft2v.train.distill`) uses them as VideoLCM does (facts §4.2):
a teacher DDIM step with CFG from ``t_s`` to ``t_e = t_s − T/N`` on the grid ``T/N·n − 1``, the student and
the target read through the LCM boundary scalings, and a pseudo-Huber (or L2) distance between them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tft2v.errors import ConfigError

LOSSES = ("huber", "l2")
TARGETS = ("ema", "none")
SIGMA_DATA = 0.5  # LCM's σ_data of the boundary scalings


@dataclass(frozen=True)
class DistillConfig:
    """``tft2v distill``: consistency distillation of a teacher model folder into a few-step student."""

    teacher: str = ""  # the teacher's model folder (``tft2v distill --teacher``); the student starts as it
    ddim_steps: int = 50  # the teacher's DDIM grid: N points T/N apart (VideoLCM: 50, a skip of 20)
    # CFG weight in LCM's form, teacher = c + w·(c − u) (the pipeline's guidance scale 1 + w); VideoLCM: 9.
    guidance_w: float = 9.0
    # [w_min, w_max]: w drawn per sample and fed to a guidance embedding the student learns (T2V-Turbo: [5, 15]).
    guidance_w_range: tuple[float, ...] = ()
    loss: str = "huber"  # pseudo-Huber (VideoLCM) or l2
    huber_c: float = 0.001
    target: str = "ema"  # an EMA of the student (VideoLCM) or none: the student itself, without gradients
    target_decay: float = 0.95
    timestep_scaling: float = 10.0  # LCM's boundary scalings take t·10 (VGen writes t/0.1)
    sample_steps: int = 4  # the distilled model folder's default step count
    validation_steps: tuple[int, ...] = (1, 2, 4)  # validation videos at each of these step counts

    def __post_init__(self):
        _choice("distill.loss", self.loss, LOSSES)
        _choice("distill.target", self.target, TARGETS)
        if not 1 <= self.ddim_steps <= 1000:
            raise ConfigError(f"distill.ddim_steps must be in [1, 1000], got {self.ddim_steps}")
        if len(self.guidance_w_range) not in (0, 2) or (self.guidance_w_range
                                                        and not 0 <= self.guidance_w_range[0] <= self.guidance_w_range[1]):
            raise ConfigError(f"distill.guidance_w_range must be [] or [w_min, w_max] with 0 <= w_min <= w_max, "
                              f"got {list(self.guidance_w_range)}")
        if self.guidance_w < 0 or self.huber_c <= 0 or self.timestep_scaling <= 0:
            raise ConfigError("distill.guidance_w must be >= 0, distill.huber_c and distill.timestep_scaling > 0")
        if not 0.0 <= self.target_decay < 1.0:
            raise ConfigError(f"distill.target_decay must be in [0, 1), got {self.target_decay}")
        steps = (self.sample_steps, *self.validation_steps)
        if min(steps) < 1 or max(steps) > self.ddim_steps:
            raise ConfigError(f"distill.sample_steps and distill.validation_steps must be in [1, distill.ddim_steps="
                              f"{self.ddim_steps}], got {self.sample_steps} / {list(self.validation_steps)}")

    @property
    def learns_guidance(self) -> bool:
        """Whether w is drawn per sample, so the student needs a guidance embedding."""
        return bool(self.guidance_w_range)


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")


def ddim_grid(num_train_timesteps: int, steps: int) -> torch.Tensor:
    """The teacher's grid ``k·n − 1``, n = 1…N, k = T // N (19, 39, …, 999 for 50): (N,) int64 — the one
    diffusers' LCMScheduler samples from (its ``original_inference_steps``)."""
    k = num_train_timesteps // steps
    return torch.arange(1, steps + 1) * k - 1


def boundary_scalings(t: torch.Tensor, timestep_scaling: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """LCM's ``c_skip(t) = σ_d² / ((s·t)² + σ_d²)``, ``c_out(t) = s·t / √((s·t)² + σ_d²)`` (σ_d = 0.5, s = 10):
    f(x, t) = c_skip·x + c_out·x̂0 is x itself at t = 0, as a consistency function must be."""
    scaled = timestep_scaling * t.double()
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip.float(), c_out.float()


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) → (B, 1, 1, 1, 1) in ``like``'s dtype and device, to scale (B, C, F, H, W) tensors."""
    return v.to(like.device, like.dtype).view(-1, *([1] * (like.ndim - 1)))


def x0_and_eps(pred: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor,
               prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂0, ε̂) from a v or ε prediction at ᾱ_t (B,). With v no division: x̂0 = √ᾱ·x − √(1−ᾱ)·v stays
    defined at the zero-SNR end (ᾱ = 0), where an ε model's x̂0 is not."""
    a, s = _col(alpha_bar.sqrt(), x_t), _col((1 - alpha_bar).sqrt(), x_t)
    if prediction_type == "v_prediction":
        return a * x_t - s * pred, a * pred + s * x_t
    if prediction_type == "epsilon":
        return (x_t - s * pred) / a, pred
    raise ConfigError(f"unknown prediction_type {prediction_type!r}")


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, alpha_bar_prev: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM (η = 0) to ᾱ_prev: ``√ᾱ_prev·x̂0 + √(1−ᾱ_prev)·ε̂``."""
    return _col(alpha_bar_prev.sqrt(), x0) * x0 + _col((1 - alpha_bar_prev).sqrt(), x0) * eps


def consistency_output(x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor,
                       timestep_scaling: float = 10.0) -> torch.Tensor:
    """The consistency function ``c_skip(t)·x_t + c_out(t)·x̂0`` (LCM's parameterisation)."""
    c_skip, c_out = boundary_scalings(t, timestep_scaling)
    return _col(c_skip, x_t) * x_t + _col(c_out, x_t) * x0


def consistency_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "huber", c: float = 0.001) -> torch.Tensor:
    """Per-sample distance (B,): pseudo-Huber ``mean(√((p − y)² + c²) − c)`` (VideoLCM, c = 0.001) or the
    mean squared error; in float32 for half-precision inputs."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    diff = (pred.float() - target.float()).flatten(1)
    if kind == "huber":
        return ((diff.pow(2) + c * c).sqrt() - c).mean(dim=1)
    if kind == "l2":
        return diff.pow(2).mean(dim=1)
    raise ConfigError(f"distill.loss must be one of {list(LOSSES)}, got {kind!r}")
