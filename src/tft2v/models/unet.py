"""TFT2VUNet: TF-T2V's space-time factorised latent UNet (SD-2.1 layout + temporal layers).

Layout: ``forward`` takes and returns ``(B, C, F, H, W)``; an image is a 1-frame video. Inside,
spatial layers see ``(B·F, C, H, W)`` and temporal layers ``(B, C, F, H, W)``.

One network serves both TF-T2V branches: the content branch calls it with 1-frame images and text
tokens, the motion branch with clips and the CLIP image tokens of one frame (empty text).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from tft2v.errors import ConfigError
from tft2v.models.blocks import (
    Downsample,
    ResBlock,
    SpatialTransformer,
    TemporalTransformer,
    Upsample,
    fourier_filter,
    zero_module,
)
from tft2v.models.conditions import (
    CONDITION_CHANNELS,
    ConditionEncoder,
    apply_keep_mask,
    condition_dropout_masks,
)


# VGen's SR600 refiner, decoder blocks 0 and 1: (factor on the first half of the backbone channels,
# scale of the skip's lowest spatial frequencies) — FreeU-style, fixed in the released model.
REFINER_DECODER_TWEAKS = ((1.1, 0.6), (1.2, 0.4))

# Options (not in VGen) that only add layers whose output starts at zero: a model trained without them
# takes them on and still computes what it computed (``TFT2VUNet.with_options``).
ADDED_LAYER_OPTIONS = ("frame_positions", "temporal_text_attention")


class TFT2VUNet(ModelMixin, ConfigMixin):
    """The video UNet. Defaults are VGen's released TF-T2V model (1.4165 B parameters)."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        model_channels: int = 320,
        channel_mult: tuple[int, ...] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        attention_scales: tuple[float, ...] = (1.0, 0.5, 0.25),
        head_dim: int = 64,
        init_temporal_heads: int = 8,
        context_dim: int = 1024,
        image_embed_dim: int | None = 1024,
        num_image_tokens: int = 4,
        conditions: tuple[str, ...] = (),
        condition_channels: int = 8,
        condition_pixel_size: tuple[int, int] = (256, 448),
        norm_num_groups: int = 32,
        dropout: float = 0.1,
        temporal_conv_dropout: float = 0.1,
        condition_dropout: float = 0.4,
        condition_encoder_dropout: float = 0.05,
        condition_p_all_zero: float = 0.1,
        condition_p_all_keep: float = 0.1,
        temporal_on_images: bool = True,
        frame_positions: bool = False,
        temporal_text_attention: bool = False,
        refiner_layout: bool = False,
        guidance_embed: bool = False,
    ):
        super().__init__()
        unknown = sorted(set(conditions) - set(CONDITION_CHANNELS))
        if unknown:
            raise ConfigError(f"unknown condition(s) {unknown}; known: {sorted(CONDITION_CHANNELS)}")
        if model_channels % head_dim:
            raise ConfigError(f"model_channels {model_channels} must be divisible by head_dim {head_dim}")
        self.gradient_checkpointing = False
        emb_dim = model_channels * 4
        groups = norm_num_groups

        def res(cin, cout):
            return ResBlock(cin, cout, emb_dim, dropout, groups, temporal_conv_dropout)

        # Not in VGen: temporal transformers that also attend to the text tokens, so a caption reaches the
        # layers that mix frames directly ("moving left" is a relation between frames).
        temporal_context = context_dim if temporal_text_attention else None

        def attn(ch):
            return [SpatialTransformer(ch, head_dim, context_dim, groups),
                    TemporalTransformer(ch, ch // head_dim, head_dim, groups, temporal_context)]

        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        if frame_positions:
            # Not in VGen: without it the network cannot tell frame 0 from frame 15 away from the clip's
            # ends, so a caption cannot ask for a frame-dependent layout ("moving left"). Zero-initialised:
            # a model trained without it behaves the same until videos teach it.
            self.frame_embed = nn.Sequential(
                nn.Linear(model_channels, emb_dim), nn.SiLU(), zero_module(nn.Linear(emb_dim, emb_dim))
            )
        if guidance_embed:
            # A consistency-distilled student's guidance weight w (VGen VideoLCM's ``time_embed_w`` layout,
            # which its released model leaves out). Zero-initialised: the student starts as its teacher.
            self.time_embed_w = nn.Sequential(
                nn.Linear(model_channels, emb_dim), nn.SiLU(), zero_module(nn.Linear(emb_dim, emb_dim))
            )
        if image_embed_dim:
            self.pre_image_condition = nn.Sequential(
                nn.Linear(image_embed_dim, context_dim), nn.SiLU(), nn.Linear(context_dim, num_image_tokens * context_dim)
            )
        self.condition_encoders = nn.ModuleDict(
            {n: ConditionEncoder(CONDITION_CHANNELS[n], condition_channels, tuple(condition_pixel_size),
                                 dropout=condition_encoder_dropout) for n in conditions}
        )

        # Encoder: every block's output is kept as a skip for the decoder.
        self.input_blocks = nn.ModuleList([nn.ModuleList([
            nn.Conv2d(in_channels + condition_channels, model_channels, 3, padding=1),
            TemporalTransformer(model_channels, init_temporal_heads, head_dim, groups, temporal_context),
        ])])
        skip_channels, ch, scale = [model_channels], model_channels, 1.0
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                out = model_channels * mult
                block = [res(ch, out)] + (attn(out) if scale in attention_scales else [])
                self.input_blocks.append(nn.ModuleList(block))
                ch = out
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                # VGen's SR600 pads its downsamples (2 rows, 1 column) and crops its upsamples by a row at
                # top and bottom: latent heights 8k + 2 (720p's 90) survive three levels and come back.
                self.input_blocks.append(Downsample(ch, (2, 1) if refiner_layout else 1))
                skip_channels.append(ch)
                scale /= 2

        self.middle_block = nn.ModuleList([res(ch, ch), *attn(ch), res(ch, ch)])

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                out = model_channels * mult
                block = [res(ch + skip_channels.pop(), out)] + (attn(out) if scale in attention_scales else [])
                if level and i == num_res_blocks:
                    block.append(Upsample(out, crop_rows=refiner_layout))
                    scale *= 2
                self.output_blocks.append(nn.ModuleList(block))
                ch = out

        self.out = nn.Sequential(
            nn.GroupNorm(groups, ch), nn.SiLU(), zero_module(nn.Conv2d(ch, out_channels, 3, padding=1))
        )

    def with_options(self, **options: bool) -> "TFT2VUNet":
        """A copy with ``options`` (names from ADDED_LAYER_OPTIONS) switched on and this model's weights; the
        added layers start as no-ops, so the copy computes what this model computes."""
        bad = sorted(k for k, v in options.items() if k not in ADDED_LAYER_OPTIONS or v is not True)
        if bad:
            raise ConfigError(f"with_options switches on {list(ADDED_LAYER_OPTIONS)} only, got {bad}")
        # Private keys left out: from_config would reset the "_use_default_values" ones to their defaults.
        config = {k: v for k, v in self.config.items() if not k.startswith("_")}
        forked = TFT2VUNet.from_config({**config, **options}).to(self.device).train(self.training)
        unexpected = forked.load_state_dict(self.state_dict(), strict=False).unexpected_keys
        if unexpected:
            raise ConfigError(f"with_options cannot drop layers: {unexpected[:3]}")
        return forked if forked.dtype == self.dtype else forked.to(self.dtype)

    # -- conditioning ---------------------------------------------------------------------------

    def sample_dropout_masks(
        self, batch_size: int, names: list[str], generator: torch.Generator | None = None, device=None
    ) -> dict[str, torch.Tensor]:
        """Training-time condition dropout masks with this model's configured probabilities."""
        c = self.config
        return condition_dropout_masks(
            batch_size, names, c.condition_dropout, c.condition_p_all_zero, c.condition_p_all_keep, generator, device
        )

    def _context(self, text: torch.Tensor, image_embeds: torch.Tensor | None, masks: dict) -> torch.Tensor:
        """Cross-attention tokens: text tokens, then ``num_image_tokens`` image tokens when an image is given."""
        context = apply_keep_mask(text, masks.get("text"))
        if image_embeds is None:
            return context
        if not hasattr(self, "pre_image_condition"):
            raise ValueError("this model has no image-token MLP (image_embed_dim is None); pass image_embeds=None")
        if image_embeds.ndim == 3:  # (B, 1, D) as VGen's vcomposer entrance passes it
            image_embeds = image_embeds[:, 0]
        tokens = self.pre_image_condition(image_embeds).view(
            image_embeds.shape[0], self.config.num_image_tokens, self.config.context_dim
        )
        return torch.cat([context, apply_keep_mask(tokens, masks.get("image"))], dim=1)

    def _condition_map(self, x: torch.Tensor, conditions: dict[str, torch.Tensor], masks: dict) -> torch.Tensor | None:
        """Sum of encoded conditions, (B, condition_channels, F, h, w), or None without conditions."""
        unknown = sorted(set(conditions) - set(self.condition_encoders))
        if unknown:
            raise ValueError(f"condition(s) {unknown} not supported by this model; it has {sorted(self.condition_encoders)}")
        total = None
        for name, cond in conditions.items():
            expected = CONDITION_CHANNELS[name]
            if cond.ndim != 5 or cond.shape[1] != expected or cond.shape[0] != x.shape[0] or cond.shape[2] != x.shape[2]:
                raise ValueError(
                    f"condition {name!r} must be (B={x.shape[0]}, {expected}, F={x.shape[2]}, H, W), got {tuple(cond.shape)}"
                )
            enc = apply_keep_mask(self.condition_encoders[name](cond.to(x.dtype)), masks.get(name))
            if enc.shape[-2:] != x.shape[-2:]:
                raise ValueError(
                    f"condition {name!r} encodes to {tuple(enc.shape[-2:])} but the latent is {tuple(x.shape[-2:])}; "
                    f"the latent must be condition_pixel_size/8 = {tuple(s // 8 for s in self.config.condition_pixel_size)}"
                )
            total = enc if total is None else total + enc
        return total

    def _conv_in(self, x: torch.Tensor, cond_map: torch.Tensor | None) -> torch.Tensor:
        conv = self.input_blocks[0][0]
        if cond_map is not None:
            return conv(torch.cat([x, cond_map], dim=1))
        # Absent conditions are zero channels: skip their (zero) contribution to the first conv.
        return F.conv2d(x, conv.weight[:, : x.shape[1]], conv.bias, padding=1)

    def check_latent_size(self, height: int, width: int) -> None:
        """Raise a one-line ValueError for a latent size whose skips would not line up: widths must halve
        exactly at every level; heights too, except in the refiner layout, where each level's height must be
        even and becomes H/2 + 1 (three levels: 8k + 2, e.g. 720p's 90 rows)."""
        levels = len(self.config.channel_mult) - 1
        if width % 2 ** levels:
            raise ValueError(f"latent width {width} must be a multiple of {2 ** levels} for this UNet")
        h = height
        for _ in range(levels):
            if h % 2:
                rule = "8k + 2 for three levels, e.g. 90" if self.config.refiner_layout else f"a multiple of {2 ** levels}"
                raise ValueError(f"latent height {height} does not fit this UNet's {levels} downsamples ({rule})")
            h = h // 2 + 1 if self.config.refiner_layout else h // 2

    def add_guidance_embedding(self) -> None:
        """Give a model without one the (zero-initialised, so output-preserving) guidance embedding of a
        consistency-distilled student that learns w; recorded in its config."""
        if self.config.guidance_embed:
            return
        ref = self.time_embed[0].weight
        emb_dim = self.time_embed[0].out_features
        self.time_embed_w = nn.Sequential(
            nn.Linear(self.config.model_channels, emb_dim), nn.SiLU(), zero_module(nn.Linear(emb_dim, emb_dim))
        ).to(ref.device, ref.dtype)
        self.register_to_config(guidance_embed=True)

    def _guidance_embedding(self, guidance, b: int, device, dtype) -> torch.Tensor:
        """(B, E): LCM's sinusoid of 1000·w (sin first, as VGen's VideoLCM) through ``time_embed_w``."""
        if guidance is None:
            raise ValueError("this model was distilled with a guidance embedding: pass guidance (the CFG weight w)")
        w = torch.as_tensor(guidance, device=device, dtype=torch.float32).reshape(-1)
        if w.numel() not in (1, b):
            raise ValueError(f"guidance must be a scalar or (B={b},), got {w.numel()} values")
        w_emb = get_timestep_embedding(w.expand(b) * 1000.0, self.config.model_channels, flip_sin_to_cos=False,
                                       downscale_freq_shift=1)
        return self.time_embed_w(w_emb.to(dtype))

    # -- forward --------------------------------------------------------------------------------

    def _run(self, module: nn.Module, h: torch.Tensor, emb, context, text, num_frames: int) -> torch.Tensor:
        temporal = num_frames > 1 or self.config.temporal_on_images
        if isinstance(module, ResBlock):
            return module(h, emb, num_frames, temporal)
        if isinstance(module, SpatialTransformer):
            return module(h, context, num_frames)
        if isinstance(module, TemporalTransformer):
            if not temporal:
                return h
            out = module(rearrange(h, "(b f) c h w -> b c f h w", f=num_frames), text)
            return rearrange(out, "b c f h w -> (b f) c h w")
        return module(h)

    def _block(self, block, h, emb, context, text, num_frames):
        modules = block if isinstance(block, nn.ModuleList) else [block]
        for m in modules:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(self._run, m, h, emb, context, text, num_frames, use_reentrant=False)
            else:
                h = self._run(m, h, emb, context, text, num_frames)
        return h

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        image_embeds: torch.Tensor | None = None,
        conditions: dict[str, torch.Tensor] | None = None,
        dropout_masks: dict[str, torch.Tensor] | None = None,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict ε or v.

        sample (B, C, F, h, w); timestep (B,) or scalar; encoder_hidden_states (B, L, context_dim);
        image_embeds (B, image_embed_dim) or None (then no image tokens are appended);
        conditions {name: (B, c, F, H, W)} at ``condition_pixel_size``; dropout_masks {name: (B,) bool}
        keep-masks for "text", "image" and condition names (training-time condition dropout);
        guidance (B,) or scalar: the CFG weight w a distilled model with ``guidance_embed`` was taught.
        Returns (B, out_channels, F, h, w).
        """
        if sample.ndim != 5:
            raise ValueError(f"sample must be (B, C, F, H, W), got shape {tuple(sample.shape)}")
        b, _, num_frames, hh, ww = sample.shape
        if sample.shape[1] != self.config.in_channels:
            raise ValueError(f"sample has {sample.shape[1]} channels, the model expects {self.config.in_channels}")
        self.check_latent_size(hh, ww)
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[-1] != self.config.context_dim:
            raise ValueError(
                f"encoder_hidden_states must be (B, L, {self.config.context_dim}), got {tuple(encoder_hidden_states.shape)}"
            )
        if encoder_hidden_states.shape[0] not in (1, b):
            raise ValueError(f"encoder_hidden_states has batch {encoder_hidden_states.shape[0]}, sample has {b}")
        masks = dropout_masks or {}
        dtype = self.time_embed[0].weight.dtype
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1)
        if timestep.numel() not in (1, b):
            raise ValueError(f"timestep must be a scalar or (B={b},), got {timestep.numel()} values")
        timestep = timestep.expand(b)
        t_emb = get_timestep_embedding(timestep, self.config.model_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        emb = self.time_embed(t_emb.to(dtype))  # (B, E), shared by all frames of a clip
        if self.config.guidance_embed:
            emb = emb + self._guidance_embedding(guidance, b, sample.device, dtype)
        elif guidance is not None:
            raise ValueError("this model has no guidance embedding (guidance_embed is False); pass guidance=None")
        if self.config.frame_positions and num_frames > 1:
            index = torch.arange(num_frames, device=sample.device)
            f_emb = get_timestep_embedding(index, self.config.model_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
            emb = emb[:, None, :] + self.frame_embed(f_emb.to(dtype))[None]  # (B, F, E)
        context = self._context(encoder_hidden_states.expand(b, -1, -1).to(dtype), image_embeds, masks)
        text = context[:, : encoder_hidden_states.shape[1]]  # (B, L, D): the text tokens, image tokens left out

        x = sample.to(dtype)
        cond_map = self._condition_map(x, conditions, masks) if conditions else None
        h = self._conv_in(rearrange(x, "b c f h w -> (b f) c h w"),
                          None if cond_map is None else rearrange(cond_map, "b c f h w -> (b f) c h w"))
        h = self._block(self.input_blocks[0][1], h, emb, context, text, num_frames)
        skips = [h]
        for block in self.input_blocks[1:]:
            h = self._block(block, h, emb, context, text, num_frames)
            skips.append(h)
        h = self._block(self.middle_block, h, emb, context, text, num_frames)
        for i, block in enumerate(self.output_blocks):
            skip = skips.pop()
            if self.config.refiner_layout and i < len(REFINER_DECODER_TWEAKS):
                factor, low = REFINER_DECODER_TWEAKS[i]
                half = h.shape[1] // 2
                h = torch.cat([h[:, :half] * factor, h[:, half:]], dim=1)
                skip = fourier_filter(skip, low)
            h = self._block(block, torch.cat([h, skip], dim=1), emb, context, text, num_frames)
        out = self.out(h)
        return rearrange(out, "(b f) c h w -> b c f h w", b=b, f=num_frames)
