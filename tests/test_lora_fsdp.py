"""LoRA under FSDP2 (two gloo CPU processes, as ``accelerate launch --config_file configs/accelerate_fsdp.yaml``
runs them): the same losses and adapter as one process on the same global batch, the adapter files gathered
from the shards (and no copy of the base), validation sampled *with* the adapter, and exact resume.

The run starts from a tiny model folder (``test_lora._from_base``) with spatial and temporal adapters,
driven by tests/dist_driver.py as in tests/test_fsdp.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dist_driver import driver_config, run  # noqa: E402
from test_fsdp import fsdp_env, sets, torchrun  # noqa: E402
from test_lora import _from_base  # noqa: E402
from tft2v.models import lora  # noqa: E402
from tft2v.train.checkpoint import list_checkpoints  # noqa: E402


def _lora_sets(root: Path) -> dict:
    """Start from the tiny model folder ``root/base`` (made on first use) with spatial + temporal adapters."""
    return {**_from_base(root), "model.lora": "{rank: 2, targets: [spatial, temporal]}"}


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory):
    """The same 4 LoRA steps under FSDP (2 ranks) and in one process; checkpoints at 2 and 4, validation."""
    root = tmp_path_factory.mktemp("lora_fsdp")
    s = _lora_sets(root)
    base = root / "base"
    fsdp = torchrun(root / "fsdp", "--steps", "4", "--save-at", "2,4", "--validate", *sets(s), env=fsdp_env())
    single = run(root / "single", 4, save_at={2, 4}, validate=True, sets=s)
    return root, base, fsdp, single


def _adapter(ckpt: Path, folder: str) -> dict:
    return lora.read_adapter(ckpt / folder)[1]


@pytest.mark.slow
def test_lora_fsdp_matches_one_process(lora_runs):
    root, base, fsdp, single = lora_runs
    assert fsdp["distributed_type"] == "FSDP" and fsdp["world"] == 2 and single["world"] == 1
    diffs = [abs(fsdp["losses"][k] - single["losses"][k]) for k in single["losses"]]
    assert max(diffs) <= 1e-5, diffs
    ours, theirs = (list_checkpoints(root / run_ / "checkpoints")[-1] for run_ in ("fsdp", "single"))
    for folder in ("lora", "lora_ema"):  # full adapter tensors, gathered from both ranks' shards
        a, b = _adapter(ours, folder), _adapter(theirs, folder)
        assert a and a.keys() == b.keys()
        for k in a:
            assert a[k].shape == b[k].shape and torch.allclose(a[k], b[k], atol=1e-5), (folder, k)
        assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # it trained
    # no gathered copy of the frozen base: the reference to it, as one process writes it
    assert not (ours / "unet").exists() and not (ours / "unet_ema").exists()
    assert json.loads((ours / "base.json").read_text()) == json.loads((theirs / "base.json").read_text())


@pytest.mark.slow
def test_lora_fsdp_validation_samples_with_the_adapter(lora_runs, tmp_path):
    root, base, fsdp, single = lora_runs
    ours, theirs = torch.load(root / "fsdp/validation_clips.pt"), torch.load(root / "single/validation_clips.pt")
    assert torch.allclose(ours, theirs, atol=1e-4)
    # The same prompts and noise through the base alone land elsewhere: the adapter is in the clips.
    from tft2v.train import Trainer
    from tft2v.train.validation import sample_validation_clips

    cfg = driver_config(tmp_path / "base_only", 1, _from_base(root))  # no adapter
    plain = Trainer(cfg)
    without = sample_validation_clips(plain.unet, plain.encoder, plain.autoencoder, cfg)
    assert without.shape == ours.shape and (without - ours).abs().max() > 1e-2


@pytest.mark.slow
def test_lora_fsdp_resume_is_exact(lora_runs, tmp_path):
    root, base, fsdp, _ = lora_runs
    step2 = root / "fsdp/checkpoints/step-00000002"
    resumed = torchrun(tmp_path / "resumed", "--steps", "4", "--save-at", "4", "--resume", str(step2),
                       *sets(_lora_sets(root)), env=fsdp_env())
    assert [resumed["losses"][s] for s in ("3", "4")] == [fsdp["losses"][s] for s in ("3", "4")]  # bit-exact
    a = list_checkpoints(tmp_path / "resumed/checkpoints")[-1]
    b = list_checkpoints(root / "fsdp/checkpoints")[-1]
    for folder in ("lora", "lora_ema"):
        wa, wb = _adapter(a, folder), _adapter(b, folder)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wb), folder
