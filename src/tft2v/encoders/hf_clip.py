"""Hugging Face ``transformers`` CLIP as a condition encoder (text tokens + pooled image embedding).

Text: tokenise to ``max_length`` ids (SOT ... EOT, then padding), run the text transformer and take
either the last layer (``layer="last"``, the ``last_hidden_state`` after ``final_layer_norm``) or the
penultimate layer followed by ``final_layer_norm`` (``layer="penultimate"``, what SD 2.x and VGen use).
No padding mask is passed: CLIP's causal mask already hides the padding from the real tokens, and
the padding positions' outputs are kept as context tokens, as SD and VGen do.

Image: CLIP preprocessing (shorter side -> model resolution, centre crop, CLIP mean/std) -> vision
tower pooled output -> ``visual_projection``. Videos elsewhere are ``(B, C, F, H, W)``; pass one
frame ``(B, 3, H, W)`` in [-1, 1] here.

A saved encoder folder holds ``config.json`` (kind, layer, max_length, pad id), ``model/`` (a
transformers CLIP folder) and ``tokenizer/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tft2v.encoders.base import ConditionEncoder, check_prompts, clip_preprocess, read_config, write_config
from tft2v.errors import ConfigError, TFT2VError

LAYERS = ("last", "penultimate")


def load_clip_model(path: str | Path):
    """A transformers ``CLIPModel`` (text + vision) or ``CLIPTextModel`` (text only) from a local folder."""
    from transformers import CLIPModel, CLIPTextModel

    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        raise TFT2VError(f"CLIP model folder {path} has no config.json")
    model_type = json.loads(config_path.read_text()).get("model_type")
    classes = {"clip": CLIPModel, "clip_text_model": CLIPTextModel}
    if model_type not in classes:
        raise TFT2VError(f"{config_path} has model_type {model_type!r}; expected 'clip' or 'clip_text_model'")
    return classes[model_type].from_pretrained(path, local_files_only=True)


def load_clip_tokenizer(path: str | Path):
    """A transformers ``CLIPTokenizer`` from a local folder (vocab.json + merges.txt or tokenizer.json)."""
    from transformers import CLIPTokenizer

    if not Path(path).is_dir():
        raise TFT2VError(f"tokenizer folder {path} does not exist")
    return CLIPTokenizer.from_pretrained(path, local_files_only=True)


class HFClipEncoder(ConditionEncoder):
    """transformers CLIP: text tokens (B, L, text_dim), image embedding (B, projection_dim)."""

    kind = "hf_clip"

    def __init__(
        self,
        path: str | Path,
        layer: str = "last",
        tokenizer_path: str | Path | None = None,
        max_length: int | None = None,
        pad_token_id: int | None = None,
    ):
        """``path``: a local CLIP folder; the tokenizer is read from ``tokenizer_path`` (default ``path``).

        ``pad_token_id`` overrides the tokenizer's padding id (OpenCLIP pads with 0).
        """
        model = load_clip_model(path)
        tokenizer = load_clip_tokenizer(tokenizer_path if tokenizer_path is not None else path)
        super().__init__()
        self._setup(model, tokenizer, layer, max_length, pad_token_id)

    def _setup(self, model, tokenizer, layer: str, max_length: int | None, pad_token_id: int | None) -> None:
        if layer not in LAYERS:
            raise ConfigError(f"unknown CLIP text layer {layer!r}; expected one of {list(LAYERS)}")
        text_config = model.config.text_config if hasattr(model.config, "text_config") else model.config
        positions = text_config.max_position_embeddings
        max_length = positions if max_length is None else max_length
        if not 1 <= max_length <= positions:
            raise ConfigError(f"max_length must be in [1, {positions}] for this CLIP, got {max_length}")
        if layer == "penultimate" and text_config.num_hidden_layers < 2:
            raise ConfigError("layer='penultimate' needs a CLIP text transformer with at least 2 layers")
        self.model, self.tokenizer, self.layer = model, tokenizer, layer
        self.max_length = max_length
        self.pad_token_id = tokenizer.pad_token_id if pad_token_id is None else pad_token_id
        self.text_dim = text_config.hidden_size
        has_vision = hasattr(model, "vision_model")
        self.image_dim = model.config.projection_dim if has_vision else None
        self.resolution = model.config.vision_config.image_size if has_vision else None
        self.freeze()

    @classmethod
    def from_parts(cls, model, tokenizer, layer: str = "last", max_length=None, pad_token_id=None):
        """Wrap an already built transformers CLIP model and tokenizer (no files read)."""
        encoder = cls.__new__(cls)
        ConditionEncoder.__init__(encoder)
        encoder._setup(model, tokenizer, layer, max_length, pad_token_id)
        return encoder

    def token_ids(self, prompts: list[str]) -> torch.Tensor:
        """prompts -> ids (B, max_length): SOT, text, EOT (EOT kept when truncating), then padding."""
        sequences = self.tokenizer(
            check_prompts(prompts), truncation=True, max_length=self.max_length, padding=False
        )["input_ids"]
        ids = torch.full((len(sequences), self.max_length), self.pad_token_id, dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return ids.to(self.device)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        text_model = self.model.text_model
        out = text_model(input_ids=self.token_ids(prompts), output_hidden_states=self.layer == "penultimate")
        if self.layer == "last":
            hidden = out.last_hidden_state  # already after final_layer_norm
        else:
            hidden = text_model.final_layer_norm(out.hidden_states[-2])  # skip the last block
        return hidden.float()  # (B, L, text_dim)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        if self.image_dim is None:
            return super().encode_image(images)
        pixels = clip_preprocess(images.to(self.device), self.resolution)  # (B, 3, R, R)
        dtype = self.model.visual_projection.weight.dtype
        pooled = self.model.vision_model(pixel_values=pixels.to(dtype)).pooler_output  # (B, width)
        return self.model.visual_projection(pooled).float()  # (B, image_dim)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = write_config(
            directory, self.kind, layer=self.layer, max_length=self.max_length, pad_token_id=self.pad_token_id
        )
        self.model.save_pretrained(directory / "model")
        self.tokenizer.save_pretrained(directory / "tokenizer")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "HFClipEncoder":
        config = read_config(directory, cls.kind)
        directory = Path(directory)
        return cls.from_parts(
            load_clip_model(directory / "model"),
            load_clip_tokenizer(directory / "tokenizer"),
            layer=config["layer"],
            max_length=config["max_length"],
            pad_token_id=config["pad_token_id"],
        )
