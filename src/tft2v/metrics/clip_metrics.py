"""CLIP-based video metrics: CLIPSIM (text–frame similarity) and frame consistency.

Videos enter as ``(B, 3, F, H, W)`` in ``[-1, 1]``; the uint8 ``(F, H, W, C)`` layout exists only at
the file I/O edge. The CLIP model is a Hugging Face ``transformers.CLIPModel`` folder on local disk
(``config.json`` + weights + tokenizer files, optionally ``preprocessor_config.json``).

Scale convention: both metrics are plain cosine similarities in ``[-1, 1]``. Papers report CLIPSIM
either raw (TF-T2V / ModelScopeT2V: 0.2930 on MSR-VTT) or ×100 (CLIPScore style: 29.30), and frame
consistency usually ×100 (a static video scores 100). Functions here return raw cosines;
:func:`tft2v.metrics.evaluate.evaluate_videos` reports both ``clipsim`` (raw) and ``clipsim_x100``, and
``frame_consistency`` (raw) and ``frame_consistency_x100``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from tft2v.errors import TFT2VError

# OpenAI CLIP's pixel statistics, used when the folder has no preprocessor_config.json.
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _features(out) -> torch.Tensor:
    # transformers ≥ 5 returns a model output whose pooler_output is the projected embedding;
    # earlier versions return the tensor itself.
    return out.pooler_output if hasattr(out, "pooler_output") else out


class CLIPScorer:
    """Embeds prompts and video frames with CLIP; all embeddings are L2-normalised."""

    def __init__(self, model, tokenizer, image_size: int, mean=_OPENAI_MEAN, std=_OPENAI_STD, frame_batch: int = 64):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.image_size, self.frame_batch = int(image_size), int(frame_batch)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.max_length = model.config.text_config.max_position_embeddings

    @classmethod
    def from_pretrained(cls, folder: str | Path, frame_batch: int = 64) -> CLIPScorer:
        """Loads ``CLIPModel`` + tokenizer (+ pixel statistics) from a local folder; never downloads."""
        from transformers import AutoTokenizer, CLIPModel

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise TFT2VError(f"CLIP folder {folder} has no config.json")
        model = CLIPModel.from_pretrained(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        size, mean, std = model.config.vision_config.image_size, _OPENAI_MEAN, _OPENAI_STD
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            cfg = json.loads(pre.read_text())
            mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
        return cls(model, tokenizer, size, mean, std, frame_batch)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def text_embeds(self, prompts: list[str]) -> torch.Tensor:
        """Prompts → ``(B, D)`` unit vectors."""
        tokens = self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        out = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return F.normalize(_features(out).float(), dim=-1)

    def _pixels(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in [-1,1] → CLIP input: shorter side resized, centre-cropped, normalised."""
        n, _, h, w = frames.shape
        s = self.image_size
        scale = s / min(h, w)
        size = (max(s, round(h * scale)), max(s, round(w * scale)))
        x = (frames.float() + 1) / 2  # [0, 1]
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (size[0] - s) // 2, (size[1] - s) // 2
        x = x[:, :, top : top + s, left : left + s]
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    @torch.no_grad()
    def frame_embeds(self, videos: torch.Tensor) -> torch.Tensor:
        """Videos ``(B, 3, F, H, W)`` in [-1,1] → per-frame unit embeddings ``(B, F, D)``."""
        if videos.ndim != 5 or videos.shape[1] != 3:
            raise TFT2VError(f"videos must be (B, 3, F, H, W), got {tuple(videos.shape)}")
        b, _, f, h, w = videos.shape
        frames = videos.transpose(1, 2).reshape(b * f, 3, h, w)  # (B·F, 3, H, W)
        chunks = []
        for i in range(0, b * f, self.frame_batch):
            pixels = self._pixels(frames[i : i + self.frame_batch].to(self.device))
            chunks.append(_features(self.model.get_image_features(pixel_values=pixels)).float())
        return F.normalize(torch.cat(chunks), dim=-1).reshape(b, f, -1)

    def clipsim(self, videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Per video, the mean over frames of cos(text, frame) → ``(B,)`` raw cosines."""
        if len(prompts) != videos.shape[0]:
            raise TFT2VError(f"got {len(prompts)} prompts for {videos.shape[0]} videos")
        text = self.text_embeds(prompts)  # (B, D)
        frames = self.frame_embeds(videos)  # (B, F, D)
        return torch.einsum("bfd,bd->bf", frames, text).mean(dim=1).cpu()

    def frame_consistency(self, videos: torch.Tensor) -> torch.Tensor:
        """Per video, the mean cos(frame_t, frame_t+1) of CLIP image embeddings → ``(B,)`` raw cosines."""
        frames = self.frame_embeds(videos)  # (B, F, D)
        if frames.shape[1] < 2:
            raise TFT2VError("frame consistency needs videos with at least 2 frames")
        return (frames[:, 1:] * frames[:, :-1]).sum(-1).mean(dim=1).cpu()
