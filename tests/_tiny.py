"""Tiny models shared by the tests (widths 8–32, seconds on 2 CPU cores): the one place that builds and
randomises test TFT2VUNets, tiny KL autoencoders and toy model folders. Videos are ``(B, C, F, H, W)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tft2v.models import TFT2VUNet

TINY = dict(
    in_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
    attention_scales=(1.0, 0.5), head_dim=8, init_temporal_heads=2, context_dim=32, image_embed_dim=24,
    num_image_tokens=2, norm_num_groups=8, dropout=0.0, condition_pixel_size=(64, 64),
)
# Pixel-space models (identity autoencoder) for pipeline / generate / web UI tests: RGB in and out, attention
# on the half-resolution level only, no condition channels unless a test asks for conditions.
PIXEL = dict(in_channels=3, out_channels=3, attention_scales=(0.5,), image_embed_dim=32, num_image_tokens=4,
             condition_channels=0)


def randomize_(model: torch.nn.Module, generator: torch.Generator, std: tuple[float, float] = (0.2, 0.05),
               zero_init_only: bool = False) -> torch.nn.Module:
    """Redraw weights in place as N(0, std[0]²) (matrices, convs) and N(0, std[1]²) (biases, norms).
    ``zero_init_only`` redraws just the zero-initialised branches (out conv, proj_out, last temporal conv)
    with std[0]: the rest keeps its init scale, and every input still reaches the output."""
    with torch.no_grad():
        for p in model.parameters():
            if zero_init_only and p.abs().sum():
                continue
            p.copy_(torch.randn(p.shape, generator=generator) * (std[0] if p.ndim > 1 or zero_init_only else std[1]))
    return model


def tiny_unet(seed: int = 0, randomize: str | None = "all", std: tuple[float, float] = (0.2, 0.05),
              **overrides) -> TFT2VUNet:
    """A tiny UNet (``TINY`` + ``overrides``) in eval mode. ``randomize``: "all" redraws every weight so
    every path matters, "zero_init" only the zero-initialised branches, None keeps the init."""
    torch.manual_seed(seed)  # ModelMixin init draws from the global RNG; pin it for reproducible weights
    model = TFT2VUNet(**{**TINY, **overrides})
    if randomize is not None:
        if randomize not in ("all", "zero_init"):
            raise ValueError(f"randomize must be 'all', 'zero_init' or None, got {randomize!r}")
        randomize_(model, torch.Generator().manual_seed(seed + 1), std, zero_init_only=randomize == "zero_init")
    return model.eval()


def tiny_kl_autoencoder(groups: int = 8, layers_per_block: int = 1, seed: int = 0):
    """A random 2-level diffusers AutoencoderKL (spatial factor 2, 4 latent channels, widths groups, 2·groups)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(groups, 2 * groups),
                         layers_per_block=layers_per_block, latent_channels=4, norm_num_groups=groups,
                         sample_size=16).eval()


def tiny_sd_unet2d(seed: int = 0, **overrides):
    """A random diffusers UNet2DConditionModel laid out as SD 2.1 (linear projections, one head width: 8),
    2 levels with attention on the first; every weight perturbed so no branch starts as zero."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    config = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                  attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8)
    unet = UNet2DConditionModel(**{**config, **overrides})
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return unet.eval()


def tiny_pipeline(unet: TFT2VUNet, defaults: dict, autoencoder=None):
    """``unet`` + the toy encoder at its width + identity (or the given) autoencoder + VGen DDIM."""
    from tft2v.autoencoder import IdentityAutoencoder
    from tft2v.encoders import build_encoder
    from tft2v.pipeline import TFT2VPipeline
    from tft2v.sampling import build_scheduler

    encoder = build_encoder("toy", text_dim=unet.config.context_dim, image_dim=unet.config.image_embed_dim or 32,
                            max_length=8)
    pipe = TFT2VPipeline(unet, build_scheduler("ddim"), encoder, autoencoder or IdentityAutoencoder(),
                         defaults=dict(defaults))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def shared_dir() -> Path:
    """The project's shared/ folder (beside the checkout); required in CI."""
    root = Path(os.environ.get("TFT2V_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
    if not (root / "vectors").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"shared vectors not found at {root} (set TFT2V_SHARED)")
        pytest.skip(f"shared vectors not found at {root}")
    return root
