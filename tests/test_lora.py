"""LoRA adapters (issue #15): injection, frozen base, trainer (only adapters learn / are saved), adapter
files, pipeline mixing / fusing, wrong base, generate --lora, finetune. Tiny models only (widths 8–16)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tests._tiny import tiny_unet  # noqa: E402
from tft2v.models import lora  # noqa: E402

SMALL = dict(channel_mult=(1,), attention_scales=(1.0,))


def _inputs(unet, frames=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, unet.config.in_channels, frames, 8, 8, generator=g)
    text = torch.randn(1, 5, unet.config.context_dim, generator=g)
    image = torch.randn(1, unet.config.image_embed_dim, generator=g) if unet.config.image_embed_dim else None
    return x, torch.tensor([7]), text, image


def _run(unet, inputs):
    x, t, text, image = inputs
    with torch.no_grad():
        return unet(x, t, text, image_embeds=image)


def _randomize_adapter(unet, name="default", seed=3, std=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, p in unet.named_parameters():
            if f"lora_" in k and f".{name}." in k:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def _from_base(tmp_path) -> dict:
    """Config overrides that start training from a tiny pixel-space model folder (its zero-init branches
    redrawn: from scratch the zero output conv would give every adapter a zero gradient)."""
    from pipeline_fixtures import toy_model_folder

    folder = tmp_path / "base"
    if not folder.exists():
        toy_model_folder(folder)
    return {"model.init": "pretrained", "model.init_path": str(folder), "model.unet": "{}",
            "encoder.args": "{text_dim: 32, image_dim: 32, max_length: 8}"}


def test_targets_select_spatial_and_temporal_modules():
    unet = tiny_unet(**SMALL)
    spatial = lora.target_modules(unet, ["spatial"])
    temporal = lora.target_modules(unet, ["temporal"])
    assert spatial and temporal and not set(spatial) & set(temporal)
    assert all("attn" in n for n in spatial)
    assert any("temporal_conv.conv4.3" in n for n in temporal)
    assert set(spatial) < set(lora.target_modules(unet, ["spatial_conv"]))
    assert lora.target_modules(unet, [r"middle_block\.0\.in_layers\.2"]) == ["middle_block.0.in_layers.2"]
    with pytest.raises(lora.LoraError, match="select no module"):
        lora.target_modules(unet, ["nothing_here"])


def test_apply_lora_freezes_base_and_starts_as_identity():
    from tft2v.config import LoraConfig

    unet = tiny_unet(**SMALL).requires_grad_(False)  # on CPU requires_grad changes kernels (last bits)
    inputs = _inputs(unet)
    before = _run(unet, inputs)
    modules = lora.apply_lora(LoraConfig(rank=4, targets=("spatial", "temporal")), unet)
    assert modules
    trainable = [k for k, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in k for k in trainable)
    assert torch.equal(_run(unet, inputs), before)  # lora_B starts at zero
    assert lora.apply_lora(LoraConfig(rank=0), tiny_unet(**SMALL)) is None


def test_trainer_with_lora_trains_and_saves_only_adapters(tmp_path):
    from train_fixtures import tiny_config

    from tft2v.train.trainer import Trainer

    cfg = tiny_config(tmp_path / "run", **{**_from_base(tmp_path), "train.max_steps": 2, "optim.ema_decay": 0.9,
                                           "model.lora": "{rank: 4, targets: [spatial, temporal]}"})
    trainer = Trainer(cfg)
    base = {k: v.clone() for k, v in trainer.unet.state_dict().items() if "lora_" not in k}
    opt_params = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    names = {id(p): k for k, p in trainer.unet.named_parameters()}
    assert opt_params and all("lora_" in names[i] for i in opt_params)
    assert all("lora_" in names[id(p)] for p in trainer.params)  # what the EMA tracks
    summary = trainer.run()
    after = trainer.unet.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())  # base untouched
    lora_b = [v for k, v in after.items() if "lora_B" in k]
    assert any(v.abs().sum() > 0 for v in lora_b)  # adapters learned
    ckpt = Path(summary["checkpoint"])
    for folder in ("lora", "lora_ema"):
        meta, weights = lora.read_adapter(ckpt / folder)
        assert weights and all(k.startswith("unet.") and ".lora_" in k for k in weights)
        assert meta["rank"] == 4 and meta["base"]["fingerprint"]
