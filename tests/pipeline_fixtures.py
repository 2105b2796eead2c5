"""Tiny model folders for pipeline / generate / convert tests, built from random weights in the test
(the models themselves come from :mod:`tests._tiny`).

Videos are ``(B, C, F, H, W)``; generation defaults here are 4 frames of 16×16, 3 steps.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests._tiny import PIXEL, tiny_kl_autoencoder, tiny_pipeline, tiny_unet
from tft2v.autoencoder import VideoAutoencoder
from tft2v.pipeline import TFT2VPipeline

TINY_DEFAULTS = {"num_frames": 4, "height": 16, "width": 16, "num_inference_steps": 3, "fps": 4}


def toy_pipeline(kl: bool = False, **unet_overrides) -> TFT2VPipeline:
    """Tiny UNet + toy encoder + identity (or tiny KL) autoencoder + VGen DDIM. Only the UNet's
    zero-initialised branches are redrawn, so the video depends on every input at init-scale activations."""
    autoencoder = VideoAutoencoder(tiny_kl_autoencoder()) if kl else None
    channels = 4 if kl else 3
    unet = tiny_unet(randomize="zero_init", std=(0.05, 0.05),
                     **{**PIXEL, "in_channels": channels, "out_channels": channels, **unet_overrides})
    return tiny_pipeline(unet, TINY_DEFAULTS, autoencoder)


def toy_model_folder(directory: Path, kl: bool = False, **unet_overrides) -> Path:
    return toy_pipeline(kl, **unet_overrides).save_pretrained(directory)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
