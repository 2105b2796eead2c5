"""CFG sampling over diffusers schedulers: VGen timesteps, batched CFG, determinism, exactness."""

import pytest
import torch

from tft2v.diffusion import build_training_scheduler
from tft2v.errors import ConfigError
from tft2v.sampling import build_scheduler, denoise, guided_prediction
from tests._tiny import tiny_unet


def test_ddim_uses_vgen_timesteps():
    s = build_scheduler("ddim")
    s.set_timesteps(50)
    assert s.timesteps.tolist() == list(range(981, 0, -20))
    assert s.final_alpha_cumprod == pytest.approx(0.99915, abs=1e-6)


def test_unknown_scheduler_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown scheduler 'nope'"):
        build_scheduler("nope")


def test_any_diffusers_scheduler_by_class_name():
    s = build_scheduler("UniPCMultistepScheduler")
    assert type(s).__name__ == "UniPCMultistepScheduler" and s.config.rescale_betas_zero_snr


class _Oracle(torch.nn.Module):
    """The exact v-predictor for data concentrated at one point ``x0``."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0
        self.alphas = build_training_scheduler().alphas_cumprod

    def forward(self, x, t, **_):
        a = self.alphas[t.long()].view(-1, 1, 1, 1, 1)
        eps = (x - a.sqrt() * self.x0) / (1 - a).sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * self.x0


@pytest.mark.parametrize("steps", [50, 10])
def test_ddim_with_oracle_follows_vgen_update(steps):
    """Deterministic DDIM keeps the oracle's ε fixed; VGen's last step lands on ᾱ_0 (not 1), so the
    result is exactly √ᾱ_0·x0 + √(1−ᾱ_0)·ε with ε = (z − √ᾱ_T·x0)/√(1−ᾱ_T)."""
    x0 = torch.full((1, 3, 2, 4, 4), 0.7)
    z = torch.randn(1, 3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    a = build_training_scheduler().alphas_cumprod.double()
    t_first = 1000 // steps * (steps - 1) + 1
    eps = (z - a[t_first].sqrt() * x0) / (1 - a[t_first]).sqrt()
    expected = a[0].sqrt() * x0 + (1 - a[0]).sqrt() * eps
    out = denoise(_Oracle(x0), build_scheduler("ddim"), z, cond={}, guidance_scale=1.0, num_inference_steps=steps)
    assert (out - expected).abs().max() < 1e-4


def test_dpmpp_with_oracle_recovers_x0():
    x0 = torch.full((1, 3, 2, 4, 4), 0.7)
    z = torch.randn(1, 3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    out = denoise(_Oracle(x0), build_scheduler("dpmpp"), z, cond={}, guidance_scale=1.0, num_inference_steps=20)
    assert (out - x0).abs().max() < 1e-4


def _conds(model, b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    cond = {"encoder_hidden_states": torch.randn(b, 5, 32, generator=g), "image_embeds": None}
    uncond = {"encoder_hidden_states": torch.randn(b, 5, 32, generator=g), "image_embeds": None}
    return cond, uncond


def test_batched_cfg_equals_two_forwards():
    model = tiny_unet()
    cond, uncond = _conds(model)
    x, t = torch.randn(1, 4, 3, 8, 8), torch.tensor([500])
    calls = []

    def fn(x, t, **kw):
        calls.append(x.shape[0])
        return model(x, t, **kw)

    with torch.no_grad():
        batched = guided_prediction(fn, x, t, cond, uncond, 9.0)
        u, c = model(x, t, **uncond), model(x, t, **cond)
    assert calls == [2]
    assert torch.allclose(batched, u + 9.0 * (c - u), atol=1e-4)


def test_unbatchable_inputs_fall_back_to_two_forwards():
    model = tiny_unet()
    cond, uncond = _conds(model)
    cond["image_embeds"] = torch.randn(1, 24)
    calls = []

    def fn(x, t, **kw):
        calls.append(x.shape[0])
        return model(x, t, **kw)

    with torch.no_grad():
        guided_prediction(fn, torch.randn(1, 4, 2, 8, 8), torch.tensor([10]), cond, uncond, 3.0)
    assert calls == [1, 1]


def test_denoise_is_seed_deterministic():
    model = tiny_unet()
    cond, uncond = _conds(model)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return denoise(model, build_scheduler("dpmpp"), torch.randn(1, 4, 2, 8, 8, generator=g), cond, uncond, 5.0, 4)

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
