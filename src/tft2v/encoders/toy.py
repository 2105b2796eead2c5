"""The shapes world's built-in encoder (SPEC §3): tiny, constructed offline, deterministic.

Text: a word-level tokenizer over the caption vocabulary (``a``, ``moving``, colours, shapes, motions)
with a padding token and an unknown-word token, padded/truncated to ``max_length`` tokens. Each word
gets a row of a seeded random orthonormal matrix (scaled to unit RMS per element), so colour, shape
and motion words are exactly orthogonal; a smaller seeded positional embedding is added. ``""`` is
``max_length`` padding tokens.

Extra words (``extra_words`` / :meth:`ToyEncoder.add_words`, e.g. a new colour a LoRA adapter teaches):
appended after the caption vocabulary, so every existing word keeps its id and its embedding bit for
bit and old prompts encode exactly as before; a word unknown to the encoder reads as ``<unk>``. An extra
word's row depends only on (``seed``, ``text_dim``, the word): a seeded Gaussian with the caption
vocabulary's span projected out (when ``text_dim`` leaves room), scaled to unit RMS. ``config.json``
lists them (``extra_words``, absent when none); a LoRA adapter folder records the words it was trained
with and loading it adds them (:meth:`tft2v.pipeline.TFT2VPipeline.load_lora_weights`).

Image: analytic features of the single object in a 32x32 frame, projected to ``image_dim`` by a
seeded orthonormal matrix (distances between feature vectors are kept up to a constant factor):
  * object mask = pixels whose brightest channel exceeds 0.35 (the background stays <= 24/255),
  * mean object colour (3) and a softmax similarity to each palette colour (6),
  * bounding-box fill ratio (1) and a softmax similarity of it to circle pi/4, square 1, triangle 1/2 (3),
  * bbox aspect ratio (1), sqrt of the area fraction (1), an object-present flag (1),
  * centroid x, y in [-1, 1], down-weighted by 0.25 (2) so that colour and shape dominate distances.
Frames of another size are resampled to 32x32 first. Videos elsewhere are ``(B, C, F, H, W)``; pass
one frame ``(B, 3, H, W)`` in [-1, 1] here.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from tft2v.data.shapes_spec import COLOURS, FRAME_SIZE, MOTIONS, SHAPES
from tft2v.encoders.base import ConditionEncoder, check_images, check_prompts, read_config, write_config
from tft2v.errors import ConfigError, TFT2VError

PAD, UNK = "<pad>", "<unk>"
VOCAB: tuple[str, ...] = (PAD, UNK, "a", "moving", *COLOURS, *SHAPES, *MOTIONS)
WEIGHTS_NAME = "model.safetensors"

MASK_THRESHOLD = 0.35  # on the brightest channel in [0, 1]
PALETTE_TEMPERATURE = 0.02  # squared RGB distance scale of the palette softmax
SHAPE_FILL = (math.pi / 4, 1.0, 0.5)  # bbox fill ratio of an ideal circle, square, triangle
SHAPE_TEMPERATURE = 0.01
POSITION_WEIGHT = 0.25
NUM_IMAGE_FEATURES = 3 + len(COLOURS) + 1 + len(SHAPE_FILL) + 1 + 1 + 1 + 2


def _orthonormal(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """(rows, cols) with orthonormal rows when rows <= cols, else unit-norm random rows."""
    gaussian = torch.randn(max(rows, cols), max(rows, cols), generator=generator, dtype=torch.float64)
    q, _ = torch.linalg.qr(gaussian)
    if rows <= cols:
        return q[:rows, :cols].float().contiguous()
    rand = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    return (rand / rand.norm(dim=1, keepdim=True)).float()


def tokenize(prompt: str, max_length: int, vocab: tuple[str, ...] = VOCAB) -> list[int]:
    """Lower-case word tokens -> vocabulary ids, unknown words -> UNK, padded/truncated to max_length."""
    words = re.findall(r"[a-z]+", prompt.lower())
    index = {word: i for i, word in enumerate(vocab)}
    ids = [index.get(word, index[UNK]) for word in words][:max_length]
    return ids + [index[PAD]] * (max_length - len(ids))


class ToyEncoder(ConditionEncoder):
    """Deterministic word-token text encoder and analytic image encoder for 32x32 shapes frames."""

    kind = "toy"

    def __init__(self, text_dim: int = 64, image_dim: int = 64, max_length: int = 8, seed: int = 0,
                 extra_words: list[str] | tuple[str, ...] = ()):
        super().__init__()
        if text_dim < 1 or max_length < 1:
            raise ConfigError(f"toy encoder needs text_dim >= 1 and max_length >= 1, got {text_dim}, {max_length}")
        if image_dim < NUM_IMAGE_FEATURES:
            raise ConfigError(f"toy encoder image_dim must be >= {NUM_IMAGE_FEATURES}, got {image_dim}")
        self.text_dim, self.image_dim, self.max_length, self.seed = text_dim, image_dim, max_length, seed
        generator = torch.Generator().manual_seed(seed)
        # Unit RMS per element, like the LayerNorm-ed tokens of a real text encoder.
        scale = math.sqrt(text_dim)
        self.register_buffer("token_embedding", _orthonormal(len(VOCAB), text_dim, generator) * scale)
        self.register_buffer("position_embedding", 0.3 * torch.randn(max_length, text_dim, generator=generator))
        projection = _orthonormal(NUM_IMAGE_FEATURES, image_dim, generator)
        self.register_buffer("image_projection", projection * math.sqrt(image_dim / NUM_IMAGE_FEATURES))
        palette = torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 255.0
        self.register_buffer("palette", palette, persistent=False)
        self.extra_words: tuple[str, ...] = ()
        self.add_words(extra_words)
        self.freeze()

    @property
    def vocab(self) -> tuple[str, ...]:
        return VOCAB + self.extra_words

    def add_words(self, words) -> list[str]:
        """Give ``words`` their own tokens (appended; existing words and their embeddings unchanged). Words
        already known are skipped; returns the ones added."""
        if isinstance(words, str):
            words = [words]
        new = []
        for word in words:
            if not isinstance(word, str) or not re.fullmatch(r"[a-z]+", word):
                raise ConfigError(f"toy encoder words must be lower-case a-z words, got {word!r}")
            if word not in self.vocab and word not in new:
                new.append(word)
        if new:
            base = self.token_embedding[: len(VOCAB)]
            rows = torch.stack([_word_row(word, base, self.seed) for word in new]).to(base)
            self.token_embedding = torch.cat([self.token_embedding, rows])
            self.extra_words = self.extra_words + tuple(new)
        return new

    def token_ids(self, prompts: list[str]) -> torch.Tensor:
        """prompts (B strings) -> ids (B, max_length) int64."""
        ids = [tokenize(p, self.max_length, self.vocab) for p in check_prompts(prompts)]
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        ids = self.token_ids(prompts)  # (B, L)
        return self.token_embedding[ids] + self.position_embedding  # (B, L, text_dim)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> analytic features (B, NUM_IMAGE_FEATURES); see module docstring."""
        x = check_images(images).to(self.device)
        if x.shape[-2:] != (FRAME_SIZE, FRAME_SIZE):
            x = F.interpolate(x, size=(FRAME_SIZE, FRAME_SIZE), mode="area")
        x = (x.clamp(-1, 1) + 1) / 2  # (B, 3, S, S) in [0, 1]
        mask = (x.amax(dim=1) > MASK_THRESHOLD).float()  # (B, S, S)
        area = mask.sum(dim=(1, 2))  # (B,)
        safe_area = area.clamp(min=1.0)
        colour = (x * mask[:, None]).sum(dim=(2, 3)) / safe_area[:, None]  # (B, 3)
        palette_sim = torch.softmax(-torch.cdist(colour, self.palette).square() / PALETTE_TEMPERATURE, dim=1)

        coords = torch.arange(FRAME_SIZE, dtype=x.dtype, device=x.device)
        rows_on, cols_on = mask.amax(dim=2) > 0, mask.amax(dim=1) > 0  # (B, S) each
        height = _extent(rows_on, coords).clamp(min=1.0)
        width = _extent(cols_on, coords).clamp(min=1.0)
        fill = area / (height * width)  # (B,)
        ideal = torch.tensor(SHAPE_FILL, dtype=x.dtype, device=x.device)
        shape_sim = torch.softmax(-(fill[:, None] - ideal).square() / SHAPE_TEMPERATURE, dim=1)
        cy = (mask.sum(dim=2) * coords).sum(dim=1) / safe_area
        cx = (mask.sum(dim=1) * coords).sum(dim=1) / safe_area
        centre = torch.stack([cx, cy], dim=1) / (FRAME_SIZE - 1) * 2 - 1  # (B, 2) in [-1, 1]
        present = (area > 0).float()
        scalars = torch.stack([fill, width / height, (area / FRAME_SIZE**2).sqrt(), present], dim=1)
        features = torch.cat(
            [colour, palette_sim, scalars[:, :1], shape_sim, scalars[:, 1:], POSITION_WEIGHT * centre], dim=1
        )
        return features * present[:, None]  # an empty frame maps to the zero vector

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_features(images) @ self.image_projection  # (B, image_dim)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = write_config(
            directory, self.kind, text_dim=self.text_dim, image_dim=self.image_dim,
            max_length=self.max_length, seed=self.seed, vocab=list(VOCAB),
            **({"extra_words": list(self.extra_words)} if self.extra_words else {}),
        )
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, directory / WEIGHTS_NAME)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "ToyEncoder":
        config = read_config(directory, cls.kind)
        if config.get("vocab") != list(VOCAB):
            raise TFT2VError(f"toy encoder in {directory} was saved with a different vocabulary")
        encoder = cls(config["text_dim"], config["image_dim"], config["max_length"], config["seed"],
                      extra_words=config.get("extra_words", ()))
        weights = Path(directory) / WEIGHTS_NAME
        if not weights.is_file():
            raise TFT2VError(f"toy encoder folder {directory} has no {WEIGHTS_NAME}")
        encoder.load_state_dict(load_file(weights))
        return encoder


def _word_row(word: str, base: torch.Tensor, seed: int) -> torch.Tensor:
    """The embedding of an extra word: a Gaussian seeded by (seed, word) with the span of the caption
    vocabulary's rows ``base`` (V, D) projected out when D > V, scaled to unit RMS per element."""
    digest = hashlib.sha256(f"{seed}:{word}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    dim = base.shape[1]
    row = torch.randn(dim, generator=generator, dtype=torch.float64)
    if base.shape[0] < dim:
        q, _ = torch.linalg.qr(base.double().T)  # (D, V) orthonormal basis of the vocabulary's span
        row = row - q @ (q.T @ row)
    return (row / row.norm() * math.sqrt(dim)).float()


def _extent(on: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Span (last - first + 1) of the True entries per row of ``on`` (B, S); 0 where none."""
    big = coords.numel()
    first = torch.where(on, coords, torch.full_like(coords, big)).amin(dim=1)
    last = torch.where(on, coords, torch.full_like(coords, -1)).amax(dim=1)
    return (last - first + 1).clamp(min=0)
