"""Validation videos during training: EMA weights when EMA is on, live weights otherwise, and the
training weights restored bit-exactly afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tft2v.train import Trainer
from tft2v.train import validation
from tft2v.train.checkpoint import ema_weights
from train_fixtures import tiny_config

VALIDATION = {"train.validation_prompts": "[a red circle, a blue square]", "train.validation_steps": 2,
              "train.validation_frames": 2}


def _capture_clips(monkeypatch) -> tuple[list[torch.Tensor], object]:
    """Record every (n, 3, F, H, W) batch the trainer's validation samples; returns (records, the real sampler)."""
    real = validation.sample_validation_clips
    records: list[torch.Tensor] = []

    def recording(*args):
        records.append(real(*args))
        return records[-1]

    monkeypatch.setattr(validation, "sample_validation_clips", recording)
    return records, real


def _state(unet) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


def test_validation_samples_the_ema_weights_and_restores_the_training_weights(tmp_path, monkeypatch):
    from tft2v.models import TFT2VUNet

    clips, sample = _capture_clips(monkeypatch)
    cfg = tiny_config(tmp_path / "run", **VALIDATION, **{"train.max_steps": 2, "optim.ema_decay": 0.9})
    trainer = Trainer(cfg)
    summary = trainer.run()  # validates once, after the last step
    assert len(clips) == 1 and len(summary["validation_videos"]) == 2

    before = _state(trainer.unet)
    trainer.validate()
    after = _state(trainer.unet)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    # An independent model holding the EMA weights (the checkpoint's unet_ema, what export uses).
    ema_unet = TFT2VUNet.from_pretrained(Path(summary["checkpoint"]) / "unet_ema")
    from_ema = sample(ema_unet, trainer.encoder, trainer.autoencoder, cfg)
    from_live = sample(trainer.unet, trainer.encoder, trainer.autoencoder, cfg)
    assert torch.equal(clips[0], from_ema) and torch.equal(clips[1], from_ema)
    assert (from_live - from_ema).abs().max() > 1e-4


def test_validation_without_ema_samples_the_live_weights(tmp_path, monkeypatch):
    clips, sample = _capture_clips(monkeypatch)
    cfg = tiny_config(tmp_path / "run", **VALIDATION, **{"train.max_steps": 1, "optim.ema_decay": 0.0})
    trainer = Trainer(cfg)
    trainer.run()
    assert trainer.ema is None and len(clips) == 1
    assert torch.equal(clips[0], sample(trainer.unet, trainer.encoder, trainer.autoencoder, cfg))


def test_ema_weights_swaps_in_the_shadow_and_restores_even_on_error():
    from diffusers.training_utils import EMAModel

    layer = torch.nn.Linear(3, 2)
    params = list(layer.parameters())
    ema = EMAModel(params, decay=0.5)
    with torch.no_grad():
        for p in params:
            p.add_(torch.linspace(0.1, 0.7, p.numel()).view_as(p))  # training moves away from the shadow
    live = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match="sampling failed"):
        with ema_weights(ema, params):
            assert all(torch.equal(p, s) for p, s in zip(params, ema.shadow_params))
            raise RuntimeError("sampling failed")
    assert all(torch.equal(p, q) for p, q in zip(params, live))
    with ema_weights(None, params):
        assert all(torch.equal(p, q) for p, q in zip(params, live))
