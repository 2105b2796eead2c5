"""The conditioning-encoder interface, the `build_encoder` factory and model-folder save/load.

Every encoder is frozen (eval mode, no gradients) and turns prompts into token sequences
``(B, L, text_dim)`` and images ``(B, 3, H, W)`` in [-1, 1] into one vector ``(B, image_dim)``.
Videos elsewhere in tft2v are ``(B, C, F, H, W)``; an image is one frame, so callers pass
``video[:, :, f]`` here.

A saved encoder is a folder with a ``config.json`` whose ``kind`` names the class that reads it back;
everything else the encoder needs (weights, tokenizer) lives in the same folder, so a pipeline folder
reloads offline.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from tft2v.errors import ConfigError, TFT2VError
from tft2v.jsonio import read_json

CONFIG_NAME = "config.json"

# kind -> "module:Class"; imported lazily so the toy encoder never pulls in transformers.
ENCODER_KINDS: dict[str, str] = {
    "toy": "tft2v.encoders.toy:ToyEncoder",
    "hf_clip": "tft2v.encoders.hf_clip:HFClipEncoder",
    "openclip": "tft2v.encoders.openclip:OpenCLIPEncoder",
    "hf_text": "tft2v.encoders.hf_text:HFTextEncoder",
}

# OpenAI CLIP image normalisation (also OpenCLIP's and VGen's).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ConditionEncoder(torch.nn.Module):
    """Frozen text/image encoder. Subclasses set ``kind``, the three sizes and implement the encoders.

    Attributes:
        text_dim: D of the text tokens.
        image_dim: D of the image embedding, ``None`` when there is no image tower.
        max_length: L, the fixed number of text tokens.
    """

    kind: str = ""
    text_dim: int
    image_dim: int | None
    max_length: int

    def freeze(self) -> None:
        """Switch off gradients and training-mode behaviour (dropout) for good."""
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "ConditionEncoder":
        # Frozen by contract: a trainer's model.train() must not turn dropout on in here.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        for tensor in list(self.parameters()) + list(self.buffers()):
            return tensor.device
        return torch.device("cpu")

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """prompts (B strings) -> tokens (B, max_length, text_dim) float32 on ``self.device``."""
        raise NotImplementedError

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1], any size -> embeddings (B, image_dim) float32."""
        raise TFT2VError(f"the {self.kind!r} encoder has no image tower; it cannot encode images")

    def save_pretrained(self, directory: str | Path) -> None:
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "ConditionEncoder":
        raise NotImplementedError


def check_prompts(prompts: list[str]) -> list[str]:
    """Validate a batch of prompts; a bare string is an error (it would be read as characters)."""
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TFT2VError("encode_text expects a list of strings, e.g. ['a red circle']")
    if len(prompts) == 0:
        raise TFT2VError("encode_text got an empty list of prompts")
    return list(prompts)


def check_images(images: torch.Tensor) -> torch.Tensor:
    """Validate an image batch (B, 3, H, W) and return it as float32."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise TFT2VError(f"encode_image expects images of shape (B, 3, H, W) in [-1, 1], got {shape}")
    return images.float()


def clip_preprocess(images: torch.Tensor, resolution: int | tuple[int, int], mean=CLIP_MEAN,
                    std=CLIP_STD) -> torch.Tensor:
    """CLIP preprocessing: (B, 3, H, W) in [-1, 1] -> (B, 3, h, w) normalised with ``mean``/``std``.

    Resize to cover (h, w) = ``resolution`` (bicubic, antialiased; the shorter side for a square),
    clamp the bicubic overshoot as an 8-bit image would, centre-crop, normalise. The one CLIP
    preprocessing: encoders and the data sources' ``encoder_image_transform`` both use it.
    """
    images = check_images(images)
    out_h, out_w = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    x = (images.clamp(-1, 1) + 1) / 2  # [-1, 1] -> [0, 1]
    h, w = x.shape[-2:]
    scale = max(out_h / h, out_w / w)
    new_h, new_w = max(out_h, round(h * scale)), max(out_w, round(w * scale))
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    x = x[:, :, top : top + out_h, left : left + out_w]
    mean = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _encoder_class(kind: str) -> type[ConditionEncoder]:
    if kind not in ENCODER_KINDS:
        raise ConfigError(f"unknown encoder kind {kind!r}; expected one of {sorted(ENCODER_KINDS)}")
    module_name, class_name = ENCODER_KINDS[kind].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_encoder(kind: str, **kwargs) -> ConditionEncoder:
    """Build an encoder by kind ("toy", "hf_clip", "openclip", "hf_text"); kwargs go to its constructor."""
    cls = _encoder_class(kind)
    try:
        return cls(**kwargs)
    except TypeError as err:  # an unknown keyword for this kind
        raise ConfigError(f"bad arguments for encoder kind {kind!r}: {err}") from None


def write_config(directory: str | Path, kind: str, **fields) -> Path:
    """Create ``directory`` and write its ``config.json`` naming ``kind`` plus ``fields``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps({"kind": kind, **fields}, indent=2) + "\n")
    return directory


def read_config(directory: str | Path, kind: str | None = None) -> dict:
    """Read an encoder folder's ``config.json``; if ``kind`` is given it must match."""
    path = Path(directory) / CONFIG_NAME
    config = read_json(path, f"encoder folder {directory} has no {CONFIG_NAME}")
    if not isinstance(config, dict) or "kind" not in config:
        raise TFT2VError(f"{path} does not name an encoder 'kind'")
    if kind is not None and config["kind"] != kind:
        raise TFT2VError(f"{path} holds a {config['kind']!r} encoder, not {kind!r}")
    return config


def load_encoder(directory: str | Path) -> ConditionEncoder:
    """Reload any encoder saved with ``save_pretrained`` (dispatches on the folder's ``kind``)."""
    return _encoder_class(read_config(directory)["kind"]).from_pretrained(directory)
