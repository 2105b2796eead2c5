"""Tiny model folders for pipeline / generate / convert tests, built from random weights in the test.

Videos are ``(B, C, F, H, W)``; generation defaults here are 4 frames of 16×16, 3 steps.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tft2v.autoencoder import IdentityAutoencoder, VideoAutoencoder
from tft2v.encoders import build_encoder
from tft2v.models import TFT2VUNet
from tft2v.pipeline import TFT2VPipeline
from tft2v.sampling import build_scheduler

TINY_DEFAULTS = {"num_frames": 4, "height": 16, "width": 16, "num_inference_steps": 3, "fps": 4}


def tiny_unet(in_channels: int = 3, seed: int = 0, **overrides) -> TFT2VUNet:
    """A TFT2VUNet small enough for CPU tests, with the (zero-initialised) output layer randomised
    so that the prediction, and hence the video, depends on every input."""
    torch.manual_seed(seed)  # ModelMixin init draws from the global RNG; pin it for reproducible weights
    kwargs = dict(in_channels=in_channels, out_channels=in_channels, model_channels=16, channel_mult=(1, 2),
                  num_res_blocks=1, attention_scales=(0.5,), head_dim=8, init_temporal_heads=2, context_dim=32,
                  image_embed_dim=32, norm_num_groups=8, condition_channels=0)
    kwargs.update(overrides)
    unet = TFT2VUNet(**kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            if not p.abs().sum():  # zero-initialised branches (out conv, proj_out…): make them act
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return unet.eval()


def tiny_kl_autoencoder() -> VideoAutoencoder:
    """A 2-level AutoencoderKL (spatial factor 2, 4 latent channels)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, sample_size=16)
    return VideoAutoencoder(vae.eval())


def toy_pipeline(kl: bool = False, **unet_overrides) -> TFT2VPipeline:
    """Tiny UNet + toy encoder + identity (or tiny KL) autoencoder + VGen DDIM."""
    autoencoder = tiny_kl_autoencoder() if kl else IdentityAutoencoder()
    unet = tiny_unet(in_channels=autoencoder.latent_channels, **unet_overrides)
    encoder = build_encoder("toy", text_dim=32, image_dim=32, max_length=8)
    pipe = TFT2VPipeline(unet, build_scheduler("ddim"), encoder, autoencoder, defaults=dict(TINY_DEFAULTS))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def toy_model_folder(directory: Path, kl: bool = False, **unet_overrides) -> Path:
    return toy_pipeline(kl, **unet_overrides).save_pretrained(directory)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
