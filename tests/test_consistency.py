"""LCM / VideoLCM math against known answers: the grid, boundary scalings, x0/ε, the DDIM step, the losses,
and agreement with diffusers' LCMScheduler, which samples what the distillation trains."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import LCMScheduler

from tft2v.consistency import (DistillConfig, boundary_scalings, consistency_loss, consistency_output, ddim_grid,
                               ddim_step, x0_and_eps)
from tft2v.diffusion import ScheduleConfig, build_training_scheduler
from tft2v.errors import ConfigError
from tft2v.sampling import build_scheduler


def test_grid_is_videolcms_and_lcmschedulers():
    grid = ddim_grid(1000, 50)
    assert grid[:3].tolist() == [19, 39, 59] and grid[-1] == 999 and len(grid) == 50
    lcm = build_scheduler("lcm", ScheduleConfig())
    lcm.set_timesteps(4)
    assert lcm.timesteps.tolist() == [999, 759, 499, 259]  # VGen's VideoLCM inference (facts §4.3)
    assert set(lcm.timesteps.tolist()) <= set(grid.tolist())
    assert ddim_grid(1000, 10).tolist() == [99, 199, 299, 399, 499, 599, 699, 799, 899, 999]


def test_boundary_scalings_known_values():
    c_skip, c_out = boundary_scalings(torch.tensor([0, 19, 999]))
    # facts §4.2: at t = 19, c_skip = 6.9e-6 and c_out = 0.9999965; at t = 0, c_skip = 1 and c_out = 0.
    assert c_skip[0] == 1.0 and c_out[0] == 0.0
    assert c_skip[1].item() == pytest.approx(0.25 / (190**2 + 0.25), rel=1e-6)
    assert c_skip[1].item() == pytest.approx(6.925e-6, rel=1e-3)
    assert c_out[1].item() == pytest.approx(190 / math.sqrt(190**2 + 0.25), rel=1e-7)
    assert c_out[1].item() == pytest.approx(0.9999965, abs=1e-7)
    ref = LCMScheduler()
    for t in (0, 19, 259, 999):
        want = ref.get_scalings_for_boundary_condition_discrete(t)
        got = boundary_scalings(torch.tensor([t]))
        assert got[0].item() == pytest.approx(want[0], rel=1e-6, abs=1e-12)
        assert got[1].item() == pytest.approx(want[1], rel=1e-6)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_x0_and_eps_invert_the_forward_process(prediction_type):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 2, 2, 4, 4, generator=g), torch.randn(3, 2, 2, 4, 4, generator=g)
    a = torch.tensor([0.9, 0.5, 0.01])
    x_t = ddim_step(x0, eps, a)  # the forward process is a DDIM step to ᾱ_t with ε
    col = a.sqrt().view(-1, 1, 1, 1, 1), (1 - a).sqrt().view(-1, 1, 1, 1, 1)
    pred = col[0] * eps - col[1] * x0 if prediction_type == "v_prediction" else eps
    got_x0, got_eps = x0_and_eps(pred, x_t, a, prediction_type)
    torch.testing.assert_close(got_x0, x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_eps, eps, rtol=1e-4, atol=1e-4)


def test_v_prediction_at_zero_snr_gives_x0_minus_v():
    v, x = torch.randn(1, 1, 1, 2, 2), torch.randn(1, 1, 1, 2, 2)
    x0, eps = x0_and_eps(v, x, torch.tensor([0.0]), "v_prediction")
    torch.testing.assert_close(x0, -v)
    torch.testing.assert_close(eps, x)


def test_losses_known_answers():
    pred = torch.zeros(2, 1, 1, 2, 2)
    target = torch.full_like(pred, 0.003)
    huber = consistency_loss(pred, target, "huber", 0.001)
    assert huber.shape == (2,)
    assert huber[0].item() == pytest.approx(math.sqrt(0.003**2 + 0.001**2) - 0.001, rel=1e-5)  # 0.0021623
    assert consistency_loss(pred, target, "l2")[0].item() == pytest.approx(9e-6, rel=1e-5)
    assert consistency_loss(target, target, "huber").abs().max() == 0
    assert consistency_loss(target, target, "l2").abs().max() == 0
    # pseudo-Huber: quadratic (≈ d²/2c) for |d| << c, linear (≈ |d|) for |d| >> c
    small, big = torch.full_like(pred, 1e-5), torch.full_like(pred, 1.0)
    assert consistency_loss(pred, small, "huber", 0.001)[0].item() == pytest.approx(1e-10 / 2e-3, rel=1e-2)
    assert consistency_loss(pred, big, "huber", 0.001)[0].item() == pytest.approx(1.0 - 0.001, rel=1e-5)
    with pytest.raises(ValueError, match="differ in shape"):
        consistency_loss(pred, target[:1])


def test_consistency_output_is_lcmschedulers_denoised():
    """The student's f(x, t) in training is exactly what LCMScheduler.step returns at the last step."""
    schedule = ScheduleConfig()
    lcm = build_scheduler("lcm", schedule)
    lcm.set_timesteps(2)
    alphas = build_training_scheduler(schedule).alphas_cumprod
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(1, 3, 2, 4, 4, generator=g), torch.randn(1, 3, 2, 4, 4, generator=g)
    for t in lcm.timesteps:
        lcm._step_index = list(lcm.timesteps).index(t)
        out = lcm.step(v, t, x, generator=torch.Generator().manual_seed(0))
        tt = torch.tensor([int(t)])
        x0 = x0_and_eps(v, x, alphas[tt], "v_prediction")[0]
        torch.testing.assert_close(consistency_output(x, x0, tt), out.denoised, rtol=1e-5, atol=1e-5)


def test_config_errors():
    with pytest.raises(ConfigError, match="distill.loss"):
        DistillConfig(loss="l1")
    with pytest.raises(ConfigError, match="distill.target must"):
        DistillConfig(target="student")
    with pytest.raises(ConfigError, match="guidance_w_range"):
        DistillConfig(guidance_w_range=(5.0,))
    with pytest.raises(ConfigError, match="guidance_w_range"):
        DistillConfig(guidance_w_range=(15.0, 5.0))
    with pytest.raises(ConfigError, match="validation_steps"):
        DistillConfig(ddim_steps=4, validation_steps=(1, 8))
    with pytest.raises(ConfigError, match="target_decay"):
        DistillConfig(target_decay=1.0)
    assert DistillConfig(guidance_w_range=(5.0, 15.0)).learns_guidance and not DistillConfig().learns_guidance
