"""Compositional condition encoders (VideoComposer-style "STC" encoders) and condition dropout.

Layout: condition videos are ``(B, c, F, H, W)`` at pixel resolution; encodings are
``(B, concat_dim, F, h, w)`` at latent resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tft2v.errors import TFT2VError

# Condition name → input channels (VGen's compositions; "masked" = 3 masked-image + 1 mask channel).
# The one list of condition names: tft2v.data.conditions.CONDITION_NAMES is this dict's keys, in this
# order (the extractor's documented order).
CONDITION_CHANNELS: dict[str, int] = {
    "sketch": 1,
    "single_sketch": 1,
    "depth": 1,
    "motion": 2,
    "masked": 4,
    "local_image": 3,
}


class FrameAttention(nn.Module):
    """Small multi-head self-attention over frames with a fused qkv projection."""

    def __init__(self, dim: int, heads: int = 2, head_dim: int = 8):
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * head_dim, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (rearrange(t, "n f (h d) -> n h f d", h=self.heads) for t in self.to_qkv(x).chunk(3, dim=-1))
        return self.to_out(rearrange(F.scaled_dot_product_attention(q, k, v), "n h f d -> n f (h d)"))


class FrameTransformer(nn.Module):
    """One pre-norm attention layer and one (un-normalised) GELU feed-forward, along frames."""

    def __init__(self, dim: int, ff_mult: int = 4, dropout: float = 0.05):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = FrameAttention(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, dim * ff_mult), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim * ff_mult, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, F, dim) → same shape."""
        x = self.attn(self.norm(x)) + x
        return self.ff(x) + x


class ConditionEncoder(nn.Module):
    """Per-frame conv stack down to latent size, then a transformer along frames at each pixel.

    The conv stack average-pools to half the configured pixel resolution (VGen fact: the pool size is
    fixed by the configuration, not by the input), then two stride-2 convs reach 1/8.
    """

    def __init__(self, in_channels: int, out_channels: int, pixel_size: tuple[int, int], hidden: int = 32,
                 dropout: float = 0.05):
        super().__init__()
        h, w = pixel_size
        self.spatial = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d((h // 2, w // 2)),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden, out_channels, 3, stride=2, padding=1),
        )
        self.temporal = FrameTransformer(out_channels, dropout=dropout)  # VGen: 0.05 in its condition transformer

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        """cond (B, c, F, H, W) → (B, out_channels, F, h, w)."""
        b, _, f = cond.shape[:3]
        x = self.spatial(rearrange(cond, "b c f h w -> (b f) c h w"))
        h, w = x.shape[-2:]
        x = self.temporal(rearrange(x, "(b f) c h w -> (b h w) f c", b=b, f=f))
        return rearrange(x, "(b h w) f c -> b c f h w", b=b, h=h, w=w)


def condition_dropout_masks(
    batch_size: int,
    names: list[str],
    p: float,
    p_all_zero: float,
    p_all_keep: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Keep-masks (B,) bool per named input, VGen's DropPath scheme: each sample is "all dropped"
    with ``p_all_zero``, "all kept" with ``p_all_keep`` (disjoint), and otherwise each input is dropped
    independently for ~``p`` of the remaining samples (a fresh choice per input).

    The masks are drawn on ``device`` (default: the generator's device, else CPU) with ``generator``,
    which must live there."""
    device = _draw_device(generator, device)
    u = torch.rand(batch_size, generator=generator, device=device)
    all_zero = u < p_all_zero
    all_keep = (u >= p_all_zero) & (u < p_all_zero + p_all_keep)
    free = ~(all_zero | all_keep)
    masks = {}
    for name in names:
        dropped = free & (torch.rand(batch_size, generator=generator, device=device) < p)
        masks[name] = ~(all_zero | dropped)
    return masks


def _draw_device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    """The device to draw on: ``device``, else the generator's, else CPU. A generator only draws on its
    own device; torch would reject a mismatch deep inside ``rand``, so name both devices here."""
    if device is None:
        return generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    if generator is not None and not _same_device(generator.device, device):
        raise TFT2VError(f"the generator is on {generator.device} but the masks are asked for on {device}; "
                         f"make the generator on {device}")
    return device


def _same_device(a: torch.device, b: torch.device) -> bool:
    # "cuda" (no index) means the current device; treat it as matching any index of that type.
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def apply_keep_mask(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Zero whole samples of ``x`` (B, ...) where ``keep`` (B,) is False."""
    if keep is None:
        return x
    return x * keep.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
