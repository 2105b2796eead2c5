"""Building blocks of the space-time UNet.

Layout: spatial modules take frames folded into the batch, ``(B·F, C, H, W)``; temporal modules take
``(B, C, F, H, W)``. Parameter names follow VGen's checkpoint layout (LDM naming) so released weights
load by name; the one deliberate rename is ``temopral_conv`` → ``temporal_conv`` (see ``convert``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def zero_module(module: nn.Module) -> nn.Module:
    """Zero-initialise the last layer of a new residual branch so it starts as an identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Attention(nn.Module):
    """Multi-head attention through ``scaled_dot_product_attention`` (scale 1/√head_dim)."""

    def __init__(self, query_dim: int, heads: int, head_dim: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, Lq, C), context (N, Lk, D) or None (self-attention) → (N, Lq, C)."""
        context = x if context is None else context
        if context.shape[1] == 1:
            # Softmax over one key is 1: attention reduces to the value path (no score matrix).
            return self.to_out(self.to_v(context).expand(-1, x.shape[1], -1))
        q, k, v = (
            rearrange(t, "n l (h d) -> n h l d", h=self.heads)
            for t in (self.to_q(x), self.to_k(context), self.to_v(context))
        )
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "n h l d -> n l (h d)"))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x):
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-LN block: self-attention, then cross-attention (or a second self-attention when
    ``context_dim`` is None, as in VGen's temporal transformers), then a GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None):
        super().__init__()
        self.attn1 = Attention(dim, heads, head_dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim)
        self.ff = FeedForward(dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Per-frame transformer over H·W tokens with cross-attention to the text/image context."""

    def __init__(self, channels: int, head_dim: int, context_dim: int, norm_groups: int):
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"channels {channels} must be divisible by head_dim {head_dim}")
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [TransformerBlock(channels, channels // head_dim, head_dim, context_dim)]
        )
        self.proj_out = zero_module(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        """x (B·F, C, H, W); context (B, L, D) is shared by all F frames of a clip."""
        bf, c, h, w = x.shape
        tokens = self.proj_in(rearrange(self.norm(x), "n c h w -> n (h w) c"))
        block = self.transformer_blocks[0]
        tokens = block.attn1(block.norm1(tokens)) + tokens
        # Cross-attention is per query token, so the F frames of a clip can share one key/value
        # set: fold frames into the sequence instead of repeating the context F times.
        q = rearrange(block.norm2(tokens), "(b f) l c -> b (f l) c", f=num_frames)
        cross = rearrange(block.attn2(q, context), "b (f l) c -> (b f) l c", f=num_frames)
        tokens = cross + tokens
        tokens = block.ff(block.norm3(tokens)) + tokens
        return rearrange(self.proj_out(tokens), "n (h w) c -> n c h w", h=h, w=w) + x


class TemporalTransformer(nn.Module):
    """Transformer along frames at every pixel; both attentions are self-attention and there is
    no positional encoding (frame order reaches the model through the temporal convs).

    ``context_dim`` (not in VGen) adds a third attention, from every pixel's frames to the text tokens,
    after the block: the caption can then act on the layer that mixes frames.
    """

    def __init__(self, channels: int, heads: int, head_dim: int, norm_groups: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * head_dim
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Conv1d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(inner, heads, head_dim, None)])
        if context_dim:
            self.norm_text = nn.LayerNorm(inner)
            self.text_attn = Attention(inner, heads, head_dim, context_dim)
            # Zero output: a model forked from a checkpoint without this attention computes what it did.
            zero_module(self.text_attn.to_out)
        self.proj_out = zero_module(nn.Conv1d(inner, channels, 1))

    def forward(self, x: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, F, H, W) → same shape; text (B, L, D), used only with ``context_dim``.
        GroupNorm statistics pool over frames (VGen fact)."""
        b, c, f, h, w = x.shape
        tokens = rearrange(self.norm(x), "b c f h w -> (b h w) f c")
        # Conv1d with kernel 1 is a Linear on the channel axis; use it as one on (N, F, C) tokens.
        tokens = F.linear(tokens, self.proj_in.weight[..., 0], self.proj_in.bias)
        tokens = self.transformer_blocks[0](tokens)
        if hasattr(self, "text_attn"):
            if text is None:
                raise ValueError("this temporal transformer attends to text: pass text (B, L, D)")
            # Every pixel's frames of a clip share the clip's text: fold pixels into the query sequence.
            q = rearrange(self.norm_text(tokens), "(b h w) f c -> b (h w f) c", b=b, h=h, w=w)
            tokens = rearrange(self.text_attn(q, text), "b (h w f) c -> (b h w) f c", h=h, w=w) + tokens
        tokens = F.linear(tokens, self.proj_out.weight[..., 0], self.proj_out.bias)
        return rearrange(tokens, "(b h w) f c -> b c f h w", b=b, h=h, w=w) + x


class TemporalConvBlock(nn.Module):
    """Four (3,1,1) convolutions along frames with a residual (VGen ``TemporalConvBlock_v2``)."""

    def __init__(self, channels: int, norm_groups: int, dropout: float = 0.1):
        super().__init__()

        def stage(with_dropout: bool) -> nn.Sequential:
            layers = [nn.GroupNorm(norm_groups, channels), nn.SiLU()]
            layers += [nn.Dropout(dropout)] if with_dropout else []
            return nn.Sequential(*layers, nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)))

        self.conv1 = stage(False)
        self.conv2 = stage(True)
        self.conv3 = stage(True)
        self.conv4 = stage(True)
        zero_module(self.conv4[-1])

    @staticmethod
    def _run(stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        *pre, conv = stage
        for m in pre:
            x = m(x)
        if x.shape[2] == 1:
            # One frame with zero padding: only the centre tap sees data, a 1×1×1 conv.
            return F.conv3d(x, conv.weight[:, :, 1:2], conv.bias)
        return conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, F, H, W) → same shape."""
        h = x
        for stage in (self.conv1, self.conv2, self.conv3, self.conv4):
            h = self._run(stage, h)
        return x + h


class ResBlock(nn.Module):
    """SD ResBlock (timestep embedding added, no scale-shift) followed by a temporal conv block."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float,
                 norm_groups: int, temporal_dropout: float = 0.1):
        super().__init__()
        self.in_layers = nn.Sequential(
            nn.GroupNorm(norm_groups, in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(norm_groups, out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = (
            nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        )
        self.temporal_conv = TemporalConvBlock(out_channels, norm_groups, temporal_dropout)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, num_frames: int, temporal: bool = True) -> torch.Tensor:
        """x (B·F, C_in, H, W), emb (B, E) per clip or (B, F, E) per frame → (B·F, C_out, H, W)."""
        h = self.in_layers(x)
        # A per-clip embedding is broadcast over frames instead of repeating rows.
        e = self.emb_layers(emb)
        e = e[:, None, :, None, None] if e.ndim == 2 else e[..., None, None]
        h = rearrange(rearrange(h, "(b f) c h w -> b f c h w", f=num_frames) + e, "b f c h w -> (b f) c h w")
        h = self.skip_connection(x) + self.out_layers(h)
        if not temporal:
            return h
        h = self.temporal_conv(rearrange(h, "(b f) c h w -> b c f h w", f=num_frames))
        return rearrange(h, "b c f h w -> (b f) c h w")


class Downsample(nn.Module):
    """3×3 stride-2 conv; ``padding`` (rows, columns): VGen's SR600 pads (2, 1), the T2V UNet 1."""

    def __init__(self, channels: int, padding: int | tuple[int, int] = 1):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    """Nearest ×2, then a 3×3 conv. ``crop_rows``: drop the first and last row in between (VGen's SR600,
    whose (2, 1)-padded downsamples map an even height H to H/2 + 1; the crop brings it back)."""

    def __init__(self, channels: int, crop_rows: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.crop_rows = crop_rows

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x[..., 1:-1, :] if self.crop_rows else x)


def fourier_filter(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Scale the 2×2 block of centred spatial frequencies around DC of ``(N, C, H, W)`` by ``scale``
    (computed in float32, returned in ``x``'s dtype): the skip attenuation of VGen's SR600 decoder."""
    h, w = x.shape[-2:]
    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    mask = torch.ones((h, w), device=x.device)
    mask[h // 2 - 1:h // 2 + 1, w // 2 - 1:w // 2 + 1] = scale
    out = torch.fft.ifftn(torch.fft.ifftshift(freq * mask, dim=(-2, -1)), dim=(-2, -1)).real
    return out.to(x.dtype)
