"""Frame-wise video autoencoders: the SD 2.1 KL-f8 VAE (diffusers ``AutoencoderKL``) and pixel space.

Videos are ``(B, C, F, H, W)`` at every boundary here (an image is F = 1), pixels in [-1, 1].
``VideoAutoencoder`` runs the 2-D VAE on every frame, as VGen does: encode = posterior *sample* x
``scaling_factor`` (0.18215 for the SD 2.1 VAE), decode = ``vae.decode(z / scaling_factor)`` in chunks
of frames to bound memory (VGen decodes 2 frames at a time). ``IdentityAutoencoder`` is the toy world's
pixel space (``kind="none"``): 3 channels, factor 1, scale 1; ``PatchAutoencoder`` (``kind="patch"``) is
pixel space folded p×p into channels.

A saved autoencoder is a folder: a plain diffusers ``AutoencoderKL`` folder, or a ``config.json``
with ``kind: "none"``; ``load_autoencoder`` reads either. ``VideoAutoencoder.from_ldm_checkpoint`` reads
the VAE out of a single-file LDM checkpoint (SD 2.1's ``v2-1_512-ema-pruned.ckpt``), offline.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from einops import rearrange

from tft2v.errors import CheckpointError, ConfigError, TFT2VError
from tft2v.jsonio import read_json

CONFIG_NAME = "config.json"
LDM_VAE_PREFIX = "first_stage_model."
# Keys every LDM KL autoencoder has; the config is read from their shapes.
LDM_VAE_KEYS = ("encoder.conv_in.weight", "encoder.down.0.block.0.conv2.weight", "decoder.conv_in.weight",
                "decoder.conv_out.weight")


def _check_video(video: torch.Tensor, channels: int, factor: int, what: str) -> None:
    if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[1] != channels:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise TFT2VError(f"{what} must have shape (B, {channels}, F, H, W), got {shape}")
    if video.shape[-2] % factor or video.shape[-1] % factor:
        raise TFT2VError(f"{what} height and width must be multiples of {factor}, got {tuple(video.shape[-2:])}")


def _check_chunk(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size!r}")


class VideoAutoencoder(torch.nn.Module):
    """diffusers ``AutoencoderKL`` applied frame by frame; frozen (eval mode, no gradients)."""

    kind = "kl"

    def __init__(self, vae):
        super().__init__()
        self.vae = vae.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "VideoAutoencoder":
        # Frozen by contract: a trainer's model.train() must not change the VAE.
        return super().train(False)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return self.vae.config.scaling_factor

    @torch.no_grad()
    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True,
               chunk_size: int = 8) -> torch.Tensor:
        """video (B, 3, F, H, W) in [-1, 1] -> latents (B, C_lat, F, H/f, W/f) float32, x scaling_factor.

        ``sample=True`` draws the posterior sample (VGen) with ``generator``; the noise is drawn once for
        the whole video, so results do not depend on ``chunk_size``. ``sample=False`` gives the mean.
        """
        mean, std = self.posterior(video, chunk_size)
        return self.sample_posterior(mean, std if sample else None, generator)

    @torch.no_grad()
    def posterior(self, video: torch.Tensor, chunk_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """video (B, 3, F, H, W) in [-1, 1] -> the posterior's (mean, std), each (B, C_lat, F, h, w),
        unscaled, in the VAE's dtype (what a latent cache stores, see tft2v.data.cache)."""
        _check_video(video, 3, self.spatial_factor, "video")
        _check_chunk(chunk_size)
        batch = video.shape[0]
        param = next(self.vae.parameters())
        frames = rearrange(video, "b c f h w -> (b f) c h w").to(param.device, param.dtype)
        means, stds = [], []
        for chunk in frames.split(chunk_size):
            posterior = self.vae.encode(chunk).latent_dist
            means.append(posterior.mean)
            stds.append(posterior.std)
        mean, std = (rearrange(torch.cat(x), "(b f) c h w -> b c f h w", b=batch) for x in (means, stds))
        return mean, std

    def sample_posterior(self, mean: torch.Tensor, std: torch.Tensor | None,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """(mean + std·ε) x scaling_factor as float32, (B, C_lat, F, h, w); ``std=None`` gives the mean.

        ε is drawn in (B·F, C, h, w) order, frame-wise as the 2-D VAE would, so a cached posterior
        and a fresh ``encode`` give the same latents for the same generator state.
        """
        from diffusers.utils.torch_utils import randn_tensor

        z = mean
        if std is not None:
            b, c, f, h, w = mean.shape
            eps = randn_tensor((b * f, c, h, w), generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + std * rearrange(eps, "(b f) c h w -> b c f h w", b=b)
        return z.float() * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, chunk_size: int = 2) -> torch.Tensor:
        """latents (B, C_lat, F, h, w), scaled -> video (B, 3, F, h*f, w*f) float32; chunk_size frames per call."""
        _check_video(latents, self.latent_channels, 1, "latents")
        _check_chunk(chunk_size)
        param = next(self.vae.parameters())
        z = rearrange(latents, "b c f h w -> (b f) c h w").to(param.device, param.dtype) / self.scaling_factor
        frames = torch.cat([self.vae.decode(chunk).sample for chunk in z.split(chunk_size)])
        return rearrange(frames.float(), "(b f) c h w -> b c f h w", b=latents.shape[0])

    def save_pretrained(self, directory: str | Path) -> None:
        self.vae.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "VideoAutoencoder":
        """Load a local diffusers ``AutoencoderKL`` folder (config.json + weights); nothing is downloaded."""
        from diffusers import AutoencoderKL

        if not (Path(path) / CONFIG_NAME).is_file():
            raise TFT2VError(f"autoencoder folder {path} has no {CONFIG_NAME}")
        return cls(AutoencoderKL.from_pretrained(path, local_files_only=True))

    @classmethod
    def from_ldm_checkpoint(cls, path: str | Path, norm_num_groups: int = 32, sample_size: int = 768,
                            scaling_factor: float = 0.18215) -> "VideoAutoencoder":
        """The VAE of a single-file LDM checkpoint (.ckpt/.safetensors; ``first_stage_model.*`` keys, or a
        bare LDM VAE file). Sizes come from the weights (:func:`ldm_vae_config`); the rest defaults to the
        SD 2.1 VAE. Keys are renamed with diffusers' LDM converter — no hub config is fetched."""
        from diffusers import AutoencoderKL
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        from tft2v.convert import load_state_dict_file

        sd = load_state_dict_file(path)
        if any(k.startswith(LDM_VAE_PREFIX) for k in sd):
            sd = {k[len(LDM_VAE_PREFIX):]: v for k, v in sd.items() if k.startswith(LDM_VAE_PREFIX)}
        absent = [k for k in LDM_VAE_KEYS if k not in sd]
        if absent:
            raise CheckpointError(f"{path} holds no LDM VAE weights (no {LDM_VAE_PREFIX}{absent[0]}); give an "
                                  "SD 2.1 checkpoint or a diffusers AutoencoderKL folder")
        config = ldm_vae_config(sd, norm_num_groups=norm_num_groups, sample_size=sample_size,
                                scaling_factor=scaling_factor)
        try:
            vae = AutoencoderKL(**config)
            result = vae.load_state_dict(convert_ldm_vae_checkpoint(sd, vae.config), strict=False)
        except (RuntimeError, ValueError) as err:  # GroupNorm sizes, tensor shape mismatches
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            detail = next((line for line in lines if "size mismatch" in line), lines[-1] if lines else "")
            raise CheckpointError(f"cannot load the VAE of {path}: {detail}") from None
        if result.missing_keys or result.unexpected_keys:
            kind, key = ("missing", result.missing_keys[0]) if result.missing_keys else \
                ("unexpected", result.unexpected_keys[0])
            raise CheckpointError(f"the VAE of {path} does not fit an AutoencoderKL: {kind} weight {key}")
        return cls(vae.eval())


class IdentityAutoencoder(torch.nn.Module):
    """Pixel space: encode and decode are the identity (3 channels, factor 1, scale 1)."""

    kind = "none"
    latent_channels = 3
    spatial_factor = 1
    scaling_factor = 1.0

    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True,
               chunk_size: int = 8) -> torch.Tensor:
        """video (B, 3, F, H, W) -> the same values as float32 (generator, sample, chunk_size unused)."""
        _check_video(video, 3, 1, "video")
        return video.float()

    def posterior(self, video: torch.Tensor, chunk_size: int = 8) -> tuple[torch.Tensor, None]:
        """video (B, 3, F, H, W) -> (the pixels as float32, None): a point mass, nothing to sample."""
        _check_video(video, 3, 1, "video")
        return video.float(), None

    def sample_posterior(self, mean: torch.Tensor, std: None = None,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """The pixels (B, 3, F, H, W) as float32; draws nothing from ``generator``."""
        return mean.float()

    def decode(self, latents: torch.Tensor, chunk_size: int = 2) -> torch.Tensor:
        """latents (B, 3, F, H, W) -> the same values as float32."""
        _check_video(latents, 3, 1, "latents")
        return latents.float()

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"_class_name": type(self).__name__, "kind": self.kind}
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "IdentityAutoencoder":
        if _read_config(path).get("kind") != cls.kind:
            raise TFT2VError(f"{Path(path) / CONFIG_NAME} does not describe a pixel-space ('none') autoencoder")
        return cls()


class PatchAutoencoder(torch.nn.Module):
    """Lossless space-to-depth "latent space": each ``p×p`` pixel patch becomes ``3·p²`` channels.

    No weights and exact inversion, yet the UNet works on a p× smaller grid — for the shapes world this
    cuts a train step ~p²-fold at identical sample quality (the toy world's cheap stand-in for a VAE).
    """

    kind = "patch"
    scaling_factor = 1.0

    def __init__(self, patch_size: int = 2):
        super().__init__()
        if not isinstance(patch_size, int) or patch_size < 1:
            raise ConfigError(f"patch_size must be a positive integer, got {patch_size!r}")
        self.patch_size = patch_size

    @property
    def latent_channels(self) -> int:
        return 3 * self.patch_size**2

    @property
    def spatial_factor(self) -> int:
        return self.patch_size

    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True,
               chunk_size: int = 8) -> torch.Tensor:
        """video (B, 3, F, H, W) -> (B, 3·p², F, H/p, W/p) float32 (generator, sample, chunk_size unused)."""
        _check_video(video, 3, self.patch_size, "video")
        p = self.patch_size
        return rearrange(video.float(), "b c f (h p) (w q) -> b (c p q) f h w", p=p, q=p)

    def posterior(self, video: torch.Tensor, chunk_size: int = 8) -> tuple[torch.Tensor, None]:
        """video (B, 3, F, H, W) -> (its patches (B, 3·p², F, H/p, W/p), None): a point mass."""
        return self.encode(video), None

    def sample_posterior(self, mean: torch.Tensor, std: None = None,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """The patches as float32; draws nothing from ``generator``."""
        return mean.float()

    def decode(self, latents: torch.Tensor, chunk_size: int = 2) -> torch.Tensor:
        """latents (B, 3·p², F, h, w) -> video (B, 3, F, h·p, w·p) float32."""
        _check_video(latents, self.latent_channels, 1, "latents")
        p = self.patch_size
        return rearrange(latents.float(), "b (c p q) f h w -> b c f (h p) (w q)", p=p, q=p)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"_class_name": type(self).__name__, "kind": self.kind, "patch_size": self.patch_size}
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "PatchAutoencoder":
        config = _read_config(path)
        if config.get("kind") != cls.kind:
            raise TFT2VError(f"{Path(path) / CONFIG_NAME} does not describe a 'patch' autoencoder")
        return cls(int(config.get("patch_size", 2)))


AUTOENCODER_KINDS = {"kl": VideoAutoencoder, "none": IdentityAutoencoder, "patch": PatchAutoencoder}


def build_autoencoder(kind: str, path: str | Path | None = None, patch_size: int = 2):
    """``"kl"``: a diffusers AutoencoderKL folder at ``path``; ``"none"``: pixel space (no path);
    ``"patch"``: lossless space-to-depth by ``patch_size`` (no path)."""
    if kind not in AUTOENCODER_KINDS:
        raise ConfigError(f"unknown autoencoder kind {kind!r}; expected one of {sorted(AUTOENCODER_KINDS)}")
    if kind in ("none", "patch"):
        if path is not None:
            raise ConfigError(f"the {kind!r} (pixel-space) autoencoder takes no path")
        return IdentityAutoencoder() if kind == "none" else PatchAutoencoder(patch_size)
    if path is None:
        raise ConfigError("the 'kl' autoencoder needs a local AutoencoderKL folder path")
    return VideoAutoencoder.from_pretrained(path)


def ldm_vae_config(sd: Mapping[str, torch.Tensor], norm_num_groups: int = 32, sample_size: int = 768,
                   scaling_factor: float = 0.18215) -> dict:
    """``AutoencoderKL`` arguments for an LDM VAE state dict (keys without ``first_stage_model.``): channels,
    block widths, layers per block and the mid-block attention are read from the weights; GroupNorm groups,
    sample size and latent scale are not stored in them (defaults: the SD 2.1 VAE's)."""
    levels = sorted({int(m[1]) for k in sd if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
    if levels != list(range(len(levels))):
        raise CheckpointError(f"LDM VAE encoder levels {levels} are not numbered 0..n-1")
    layers = {int(m[1]) for k in sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))}
    return {
        "in_channels": sd["encoder.conv_in.weight"].shape[1],
        "out_channels": sd["decoder.conv_out.weight"].shape[0],
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "block_out_channels": [sd[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] for i in levels],
        "layers_per_block": len(layers),
        "latent_channels": sd["decoder.conv_in.weight"].shape[1],
        "norm_num_groups": norm_num_groups,
        "sample_size": sample_size,
        "scaling_factor": scaling_factor,
        "mid_block_add_attention": "encoder.mid.attn_1.q.weight" in sd,
    }


def _read_config(path: str | Path) -> dict:
    return read_json(Path(path) / CONFIG_NAME, f"autoencoder folder {path} has no {CONFIG_NAME}")


def load_autoencoder(path: str | Path) -> VideoAutoencoder | IdentityAutoencoder:
    """Reload a saved autoencoder folder of either kind (a diffusers AutoencoderKL folder or 'none')."""
    config = _read_config(path)
    if config.get("kind") == IdentityAutoencoder.kind:
        return IdentityAutoencoder.from_pretrained(path)
    if config.get("kind") == PatchAutoencoder.kind:
        return PatchAutoencoder.from_pretrained(path)
    if config.get("_class_name") == "AutoencoderKL":
        return VideoAutoencoder.from_pretrained(path)
    raise TFT2VError(f"{Path(path) / CONFIG_NAME} is neither an AutoencoderKL nor a pixel-space autoencoder")
