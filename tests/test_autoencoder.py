"""Tests for tft2v.autoencoder: frame-wise AutoencoderKL wrapper and the pixel-space identity."""

from __future__ import annotations

import pytest
import torch

from tft2v.autoencoder import IdentityAutoencoder, VideoAutoencoder, build_autoencoder, load_autoencoder
from tft2v.errors import ConfigError, TFT2VError


@pytest.fixture
def tiny_vae_dir(tmp_path):
    """A random 2-level AutoencoderKL (spatial factor 2, 4 latent channels) saved as a diffusers folder."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4, norm_num_groups=4,
    )
    vae.save_pretrained(tmp_path / "vae")
    return tmp_path / "vae"


def video(b=2, f=3, h=16, w=16, seed=0):
    return torch.rand(b, 3, f, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_kl_shapes_and_properties(tiny_vae_dir):
    ae = build_autoencoder("kl", tiny_vae_dir)
    assert (ae.latent_channels, ae.spatial_factor, ae.scaling_factor) == (4, 2, 0.18215)
    z = ae.encode(video(), generator=torch.Generator().manual_seed(1))
    assert z.shape == (2, 4, 3, 8, 8) and z.dtype == torch.float32
    out = ae.decode(z)
    assert out.shape == (2, 3, 3, 16, 16)
    assert not ae.training and not any(p.requires_grad for p in ae.parameters())


def test_kl_is_framewise_and_scaled(tiny_vae_dir):
    ae = build_autoencoder("kl", tiny_vae_dir)
    x = video()
    z = ae.encode(x, sample=False)
    # Frame 1 of sample 1 equals the 2-D VAE mean of that frame, times the scale.
    mean = ae.vae.encode(x[1:2, :, 1]).latent_dist.mean
    torch.testing.assert_close(z[1:2, :, 1], mean * 0.18215, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ae.decode(z)[1:2, :, 1], ae.vae.decode(mean).sample, atol=1e-5, rtol=1e-5)


def test_kl_sampling_determinism_and_chunking(tiny_vae_dir):
    ae = build_autoencoder("kl", tiny_vae_dir)
    x = video()
    a = ae.encode(x, generator=torch.Generator().manual_seed(5), chunk_size=2)
    b = ae.encode(x, generator=torch.Generator().manual_seed(5), chunk_size=6)
    c = ae.encode(x, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)  # same noise whatever the chunking
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, ae.encode(x, sample=False))
    torch.testing.assert_close(ae.decode(a, chunk_size=1), ae.decode(a, chunk_size=6), atol=1e-5, rtol=0)


def test_kl_save_load_round_trip(tiny_vae_dir, tmp_path):
    ae = build_autoencoder("kl", tiny_vae_dir)
    ae.save_pretrained(tmp_path / "saved")
    loaded = load_autoencoder(tmp_path / "saved")
    assert isinstance(loaded, VideoAutoencoder)
    z = ae.encode(video(), sample=False)
    assert torch.equal(loaded.encode(video(), sample=False), z)
    assert torch.equal(loaded.decode(z), ae.decode(z))


def test_kl_bad_inputs(tiny_vae_dir, tmp_path):
    ae = build_autoencoder("kl", tiny_vae_dir)
    with pytest.raises(TFT2VError, match=r"video must have shape \(B, 3, F, H, W\)"):
        ae.encode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(TFT2VError, match="multiples of 2"):
        ae.encode(torch.zeros(1, 3, 2, 15, 16))
    with pytest.raises(TFT2VError, match=r"latents must have shape \(B, 4, F, H, W\)"):
        ae.decode(torch.zeros(1, 3, 2, 8, 8))
    with pytest.raises(ConfigError, match="chunk_size"):
        ae.decode(torch.zeros(1, 4, 2, 8, 8), chunk_size=0)
    with pytest.raises(TFT2VError, match="has no config.json"):
        build_autoencoder("kl", tmp_path / "missing")
    with pytest.raises(ConfigError, match="unknown autoencoder kind 'vq'"):
        build_autoencoder("vq")


def test_identity_autoencoder(tmp_path):
    ae = build_autoencoder("none")
    assert (ae.latent_channels, ae.spatial_factor, ae.scaling_factor) == (3, 1, 1.0)
    x = video(f=4, h=8, w=8)
    assert torch.equal(ae.encode(x), x) and torch.equal(ae.decode(x), x)
    ae.save_pretrained(tmp_path / "ae")
    assert isinstance(load_autoencoder(tmp_path / "ae"), IdentityAutoencoder)
    with pytest.raises(ConfigError, match="takes no path"):
        build_autoencoder("none", tmp_path)
    with pytest.raises(TFT2VError, match=r"\(B, 3, F, H, W\)"):
        ae.encode(torch.zeros(1, 4, 1, 8, 8))


def test_patch_autoencoder_is_lossless_and_reloads(tmp_path):
    from tft2v.autoencoder import PatchAutoencoder, build_autoencoder, load_autoencoder

    ae = build_autoencoder("patch", patch_size=2)
    video = torch.rand(2, 3, 4, 8, 12) * 2 - 1
    z = ae.encode(video)
    assert z.shape == (2, 12, 4, 4, 6) and ae.latent_channels == 12 and ae.spatial_factor == 2
    # channel (c, p, q) holds pixel (2h + p, 2w + q) of colour c
    assert torch.equal(z[:, 0 * 4 + 0 * 2 + 1, :, 1, 2], video[:, 0, :, 2, 5])  # c=0, p=0, q=1
    assert torch.equal(ae.decode(z), video)
    ae.save_pretrained(tmp_path / "ae")
    again = load_autoencoder(tmp_path / "ae")
    assert isinstance(again, PatchAutoencoder) and again.patch_size == 2
    with pytest.raises(TFT2VError, match="multiples of 2"):
        ae.encode(torch.zeros(1, 3, 1, 7, 8))
