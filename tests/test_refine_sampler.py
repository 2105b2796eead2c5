"""The SR600 refinement sampler against VGen's recorded trace (shared/vectors/sr600_refine_trace.safetensors):
schedule tables, the grid, DDIM inversion, CFG with rescale, and the whole DPM-Solver++(2M) SDE run with
VGen's injected Brownian noise."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tft2v import refine_sampler as rs
from tft2v.convert import load_vgen_unet
from tests._tiny import shared_dir


@pytest.fixture(scope="module")
def trace():
    return load_file(str(shared_dir() / "vectors" / "sr600_refine_trace.safetensors"))


@pytest.fixture(scope="module")
def model():
    vec = shared_dir() / "vectors"
    spec = json.loads((vec / "sr600_parity.json").read_text())["models"][0]
    unet = load_vgen_unet(vec / spec["weights"], {**spec["config"], "type": "UNetSD_SR600"})
    return lambda x, t, context: unet(x, t, context)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_schedule_tables_and_grid(trace):
    sigmas, alphas = rs.cosine_table()  # diffusers' cosine betas
    assert (sigmas - trace["inv_sigmas_table"]).abs().max() <= 1e-7
    assert (alphas - trace["inv_alphas_table"]).abs().max() <= 1e-7
    sigmas, alphas = rs.logsnr_interp_table()
    assert (sigmas - trace["samp_sigmas_table"]).abs().max() <= 2e-7
    assert (alphas[:700] - trace["samp_alphas_table"][:700]).abs().max() <= 1e-6  # the t the sampler uses
    recorded = trace["samp_sigmas"][:-1]
    ve, model_t = rs.sampler_grid(699, 30, rs.ve_sigmas(trace["samp_sigmas_table"]))  # VGen's own table
    assert torch.equal(model_t, trace["samp_model_t"]) and len(ve) == 31 and ve[-1] == 0
    assert ((ve[:-1] - recorded).abs() / recorded).max() <= 2e-7
    # Ours differs from VGen's float32 table by an ulp; near t_max, 1/alpha ~ 6.4 amplifies it in the VE sigma.
    ve, model_t = rs.sampler_grid(699, 30, rs.ve_sigmas(sigmas))
    assert torch.equal(model_t, trace["samp_model_t"])
    assert ((ve[:-1] - recorded).abs() / recorded).max() <= 5e-6


def test_guided_v_is_cfg_then_rescale(trace):
    t = trace["samp_model_t"][0]
    _, alphas = rs.logsnr_interp_table()
    sigmas, _ = rs.logsnr_interp_table()
    v = rs.guided_v(trace["samp_v_cond"][0], trace["samp_v_uncond"][0], 9.0, 0.3)
    denoised = alphas[t] * trace["samp_x_in"][0] - sigmas[t] * v
    assert (denoised - trace["samp_x0_pred"][0]).abs().max() <= 1e-4
    plain = rs.guided_v(trace["samp_v_cond"][0], trace["samp_v_uncond"][0], 9.0, 0.0)
    assert (plain - v).abs().max() > 1e-2  # the rescale is what matches


def test_ddim_inversion_matches_vgen(trace, model):
    with torch.no_grad():
        inverted = rs.ddim_invert(model, trace["x0"], trace["y_uncond"], t_max=699, steps=30)
    assert (inverted - trace["inv_final"]).abs().max() <= 1e-4
    assert _rel(inverted, trace["inv_final"]) <= 1e-3


@pytest.mark.slow
def test_whole_refinement_matches_vgen_with_its_noise(trace, model):
    with torch.no_grad():
        out = rs.dpmpp_2m_sde(model, trace["inv_final"], trace["y_cond"], trace["y_uncond"], t_max=699, steps=30,
                              guidance_scale=9.0, guidance_rescale=0.3, noise_fn=lambda i, x: trace["samp_noise"][i])
    assert (out - trace["refined"]).abs().max() <= 1e-3
    assert _rel(out, trace["refined"]) <= 1e-3
    # Other noise lands elsewhere: the injected noise is part of what matches.
    with torch.no_grad():
        other = rs.dpmpp_2m_sde(model, trace["inv_final"], trace["y_cond"], trace["y_uncond"],
                                generator=torch.Generator().manual_seed(0))
    assert _rel(other, trace["refined"]) > 1e-2


def test_the_update_is_diffusers_dpmpp_2m_sde_on_vgens_grid():
    """The solver step is diffusers' DPMSolverMultistepScheduler (x̂0 handed in): written out by hand in VE form
    (data-prediction 2M SDE, arXiv 2211.01095), the same steps land within float error."""
    import math

    vp_s, vp_a = rs.logsnr_interp_table()
    sigmas, model_t = rs.sampler_grid(699, 6, rs.ve_sigmas(vp_s))
    g = torch.Generator().manual_seed(0)
    noise, weight = torch.randn(1, 4, 2, 4, 4, generator=g), torch.randn(4, 4, generator=g) * 0.3
    zs = [torch.randn(1, 4, 2, 4, 4, generator=g) for _ in range(6)]

    def model(x, t, context):
        return torch.einsum("bcfhw,cd->bdfhw", x, weight) * (1 + t.float().view(-1, 1, 1, 1, 1) / 1000)

    ctx = torch.zeros(1, 1, 1)
    ours = rs.dpmpp_2m_sde(model, noise, ctx, ctx, 699, 6, 1.0, 0.0, noise_fn=lambda i, x: zs[i])
    x, previous, h_previous = noise * sigmas[0], None, None
    for i in range(len(sigmas) - 1):
        s, s_next, t = float(sigmas[i]), float(sigmas[i + 1]), int(model_t[i])
        u = x / math.sqrt(s * s + 1)
        denoised = vp_a[t] * u - vp_s[t] * model(u, torch.tensor([t]), ctx)
        if s_next == 0:
            x = denoised
            break
        h = math.log(s / s_next)
        x = (s_next / s) * math.exp(-h) * x + (1 - math.exp(-2 * h)) * denoised
        if previous is not None:
            x = x + 0.5 * (1 - math.exp(-2 * h)) * (h / h_previous) * (denoised - previous)
        x = x + s_next * math.sqrt(1 - math.exp(-2 * h)) * zs[i]
        previous, h_previous = denoised, h
    assert (ours - x).abs().max() <= 1e-5 * x.abs().max()
