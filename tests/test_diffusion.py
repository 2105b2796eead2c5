"""Schedule parity with VGen, offset noise, noising and targets."""

import pytest
import torch
from safetensors.torch import load_file

from tft2v.diffusion import ScheduleConfig, build_training_scheduler, noisy_inputs, prediction_target, sample_noise
from tft2v.errors import ConfigError
from tests._tiny import shared_dir


def test_schedule_matches_vgen():
    ref = load_file(str(shared_dir() / "vectors" / "vgen_schedule.safetensors"))
    sched = build_training_scheduler()
    assert (sched.alphas_cumprod.double() - ref["alphas_cumprod"]).abs().max() <= 1e-6
    assert sched.alphas_cumprod[999] == 0.0
    assert torch.allclose(sched.betas.double(), ref["betas"], rtol=1e-4, atol=1e-5)


def test_offset_noise_is_constant_over_space_per_sample_channel_frame():
    g = torch.Generator().manual_seed(0)
    plain = sample_noise((2, 3, 4, 8, 8), 0.0, torch.Generator().manual_seed(0))
    off = sample_noise((2, 3, 4, 8, 8), 0.1, g)
    delta = off - plain
    assert torch.allclose(delta, delta[..., :1, :1].expand_as(delta), atol=1e-6)
    per_bcf = delta[..., 0, 0]
    assert per_bcf.std() > 0.02 and per_bcf.unique().numel() == 24


def test_v_target_and_noising_formula():
    sched = build_training_scheduler()
    x0, noise = torch.randn(3, 4, 2, 4, 4), torch.randn(3, 4, 2, 4, 4)
    t = torch.tensor([0, 500, 999])
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    v = prediction_target(sched, x0, noise, t, "v_prediction")
    assert torch.allclose(v, a.sqrt() * noise - (1 - a).sqrt() * x0, atol=1e-6)
    assert torch.equal(prediction_target(sched, x0, noise, t, "epsilon"), noise)
    assert torch.allclose(sched.add_noise(x0, noise, t), a.sqrt() * x0 + (1 - a).sqrt() * noise, atol=1e-6)


def test_noisy_inputs_seeded_and_shape_checked():
    sched, cfg = build_training_scheduler(), ScheduleConfig()
    x0 = torch.randn(2, 4, 3, 4, 4)
    a = noisy_inputs(sched, x0, cfg, torch.Generator().manual_seed(1))
    b = noisy_inputs(sched, x0, cfg, torch.Generator().manual_seed(1))
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    with pytest.raises(ValueError, match="B, C, F, H, W"):
        noisy_inputs(sched, x0[:, :, 0], cfg)


def test_bad_prediction_type():
    with pytest.raises(ConfigError, match="prediction_type"):
        ScheduleConfig(prediction_type="x0")


def test_sample_timesteps_high_noise_share():
    from tft2v.diffusion import sample_timesteps

    uniform = sample_timesteps(4000, 1000, torch.Generator().manual_seed(0))
    assert torch.equal(sample_timesteps(4000, 1000, torch.Generator().manual_seed(0), high_noise_share=0.0,
                                        high_noise_start=600), uniform)  # the default draws as before
    t = sample_timesteps(4000, 1000, torch.Generator().manual_seed(0), high_noise_share=0.5, high_noise_start=600)
    assert t.min() >= 0 and t.max() < 1000 and t.dtype == torch.int64
    # P(t >= 600) = 0.5 + 0.5 * 0.4 = 0.7 (uniform: 0.4)
    assert abs((t >= 600).float().mean().item() - 0.7) < 0.03
    assert abs((uniform >= 600).float().mean().item() - 0.4) < 0.03
