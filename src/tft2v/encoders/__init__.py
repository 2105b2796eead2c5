"""Conditioning encoders behind one interface (text -> (B, L, D) tokens, image -> (B, D)).

Kinds: ``toy`` (built-in, shapes world), ``hf_clip`` (transformers CLIP folder), ``openclip``
(OpenCLIP ViT-H/14 state dict, VGen-compatible penultimate tokens) and ``hf_text`` (any transformers
text encoder folder). Videos elsewhere are ``(B, C, F, H, W)``; image encoders take one frame.
"""

from tft2v.encoders.base import (
    CLIP_MEAN,
    CLIP_STD,
    ENCODER_KINDS,
    ConditionEncoder,
    build_encoder,
    clip_preprocess,
    load_encoder,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "ENCODER_KINDS",
    "ConditionEncoder",
    "build_encoder",
    "clip_preprocess",
    "load_encoder",
]
