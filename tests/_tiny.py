"""Tiny model configs shared by the core tests (widths 8–32, seconds on 2 CPU cores)."""

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


def tiny_unet(seed: int = 0, randomize: bool = True, **overrides) -> TFT2VUNet:
    """A tiny UNet; ``randomize`` replaces the zero-initialised layers so every path matters."""
    torch.manual_seed(seed)
    model = TFT2VUNet(**{**TINY, **overrides})
    if randomize:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.ndim > 1 else 0.05))
    return model.eval()


def shared_dir() -> Path:
    """The project's shared/ folder (beside the checkout); required in CI."""
    root = Path(os.environ.get("TFT2V_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
    if not (root / "vectors").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"shared vectors not found at {root} (set TFT2V_SHARED)")
        pytest.skip(f"shared vectors not found at {root}")
    return root
