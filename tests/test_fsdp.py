"""FSDP2 through accelerate on two CPU processes (gloo), launched as ``accelerate launch --config_file
configs/accelerate_fsdp.yaml`` launches them: the same per-step losses as one process on the same global
batch, sharded checkpoints that resume exactly, validation and export with every rank taking part.

The driver (tests/dist_driver.py) feeds ``Trainer.train_step`` each rank's half of one hand-built global
batch of 4 (one process: all 4); the per-sample generators make the randomness match, dropout is off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
import yaml

from dist_driver import run
from tft2v.train.checkpoint import WEIGHTS_NAME, list_checkpoints

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "dist_driver.py"
# The tiny UNet plus an image-token MLP that no step uses (image tokens are off in the tiny config): its
# parameters never get a gradient, so they have no optimizer state — the sharded optimizer checkpoint must
# still load.
UNUSED_MLP = {"model.unet": "{model_channels: 8, channel_mult: [1, 2], num_res_blocks: 1, attention_scales: [0.5],"
                            " head_dim: 8, init_temporal_heads: 1, norm_num_groups: 4, condition_channels: 0,"
                            " image_embed_dim: 16, dropout: 0.0, temporal_conv_dropout: 0.0}"}


def fsdp_env() -> dict:
    """The variables ``accelerate launch`` sets from configs/accelerate_fsdp.yaml (without its start-up cost)."""
    fsdp = yaml.safe_load((REPO / "configs/accelerate_fsdp.yaml").read_text())["fsdp_config"]
    env = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": str(fsdp["fsdp_version"]),
           "FSDP_AUTO_WRAP_POLICY": fsdp["fsdp_auto_wrap_policy"],
           "FSDP_TRANSFORMER_CLS_TO_WRAP": fsdp["fsdp_transformer_layer_cls_to_wrap"],
           "FSDP_STATE_DICT_TYPE": fsdp["fsdp_state_dict_type"],
           "FSDP_RESHARD_AFTER_FORWARD": str(fsdp["fsdp_reshard_after_forward"]).lower(),
           "FSDP_OFFLOAD_PARAMS": str(fsdp["fsdp_offload_params"]).lower()}
    return {**os.environ, **env, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def torchrun(out: Path, *args: str, env: dict) -> dict:
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(DRIVER), str(out), *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads((out / "driver_rank0.json").read_text())


def sets(d: dict) -> list[str]:
    return ["--set", *(f"{k}={v}" for k, v in d.items())]


def weights(ckpt: Path, folder: str) -> dict:
    return safetensors.torch.load_file(ckpt / folder / WEIGHTS_NAME)


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    """4 FSDP steps on 2 ranks, checkpoints at 2 and 4, then validation and export."""
    out = tmp_path_factory.mktemp("fsdp") / "run"
    result = torchrun(out, "--steps", "4", "--save-at", "2,4", "--validate", "--export", *sets(UNUSED_MLP),
                      env=fsdp_env())
    return out, result


@pytest.mark.slow
def test_fsdp_two_ranks_match_one_process(fsdp_run, tmp_path):
    out, fsdp = fsdp_run
    assert fsdp["distributed_type"] == "FSDP" and fsdp["world"] == 2
    assert fsdp["model_class"] == "FSDPTFT2VUNet"  # sharded by fully_shard, not wrapped in DDP
    single = run(tmp_path / "single", 4, save_at={4}, validate=True, sets=UNUSED_MLP)
    assert single["world"] == 1
    diffs = [abs(fsdp["losses"][s] - single["losses"][s]) for s in single["losses"]]
    assert max(diffs) <= 1e-5, diffs
    # unet/ and unet_ema/ hold the full gathered weights, as one process writes them
    ours, theirs = list_checkpoints(out / "checkpoints")[-1], list_checkpoints(tmp_path / "single/checkpoints")[-1]
    for folder in ("unet", "unet_ema"):
        a, b = weights(ours, folder), weights(theirs, folder)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].shape == b[k].shape and torch.allclose(a[k], b[k], atol=1e-5), (folder, k)
        assert json.loads((ours / folder / "config.json").read_text())["_class_name"] == "TFT2VUNet"
    # validation: full EMA weights gathered with both ranks, sampled by the main process
    clips = torch.load(out / "validation_clips.pt"), torch.load(tmp_path / "single/validation_clips.pt")
    assert clips[0].shape == clips[1].shape and torch.allclose(*clips, atol=1e-4)
    assert len(fsdp["validation"]) == 2 and all(Path(p).is_file() for p in fsdp["validation"])


@pytest.mark.slow
def test_fsdp_sharded_checkpoint_layout_and_export(fsdp_run):
    out, fsdp = fsdp_run
    ckpt = list_checkpoints(out / "checkpoints")[-1]
    assert ckpt.name == "step-00000004" and not list((out / "checkpoints").glob(".tmp-*"))
    names = {p.name for p in ckpt.iterdir()}
    assert {"unet", "unet_ema", "optimizer_0", "ema_rank0.pt", "ema_rank1.pt", "rank0.json", "rank1.json",
            "rank0_rng.pt", "rank1_rng.pt", "lr_scheduler.pt", "trainer_state.json", "config.yaml"} <= names
    assert "optimizer.pt" not in names and "ema.pt" not in names
    assert json.loads((ckpt / "trainer_state.json").read_text())["distributed_type"] == "FSDP"
    # export reads the checkpoint's full EMA weights
    model = Path(fsdp["model"])
    exported = safetensors.torch.load_file(next((model / "unet").glob("*.safetensors")))
    ema = weights(ckpt, "unet_ema")
    assert exported.keys() == ema.keys() and all(torch.equal(exported[k], ema[k]) for k in ema)


@pytest.mark.slow
def test_fsdp_resume_from_sharded_checkpoint_is_exact(fsdp_run, tmp_path):
    out, fsdp = fsdp_run
    step2 = out / "checkpoints/step-00000002"
    resumed = torchrun(tmp_path / "resumed", "--steps", "4", "--save-at", "4", "--resume", str(step2),
                       *sets(UNUSED_MLP), env=fsdp_env())
    assert list(resumed["losses"]) == ["3", "4"]
    assert [resumed["losses"][s] for s in ("3", "4")] == [fsdp["losses"][s] for s in ("3", "4")]  # bit-exact
    a = list_checkpoints(tmp_path / "resumed/checkpoints")[-1]
    b = list_checkpoints(out / "checkpoints")[-1]
    for folder in ("unet", "unet_ema"):
        wa, wb = weights(a, folder), weights(b, folder)
        assert all(torch.equal(wa[k], wb[k]) for k in wb), folder


@pytest.mark.slow
def test_fsdp_nan_on_one_rank_skips_the_step_on_both(tmp_path):
    """Step 2's NaN pixels are in rank 0's half of the batch only; without clipping each rank checks its own
    gradient shards. Both ranks skip step 2 (no rank hangs in a collective the other left), and the run goes
    on as one process that skipped the same step."""
    no_clip = {**UNUSED_MLP, "optim.max_grad_norm": 0.0}
    fsdp = torchrun(tmp_path / "fsdp", "--steps", "3", "--save-at", "3", "--nan-at", "2", *sets(no_clip),
                    env=fsdp_env())
    single = run(tmp_path / "single", 3, save_at={3}, sets=no_clip, nan_at=2)
    other_rank = json.loads((tmp_path / "fsdp/driver_rank1.json").read_text())
    assert fsdp["skipped_steps"] == other_rank["skipped_steps"] == single["skipped_steps"] == 1
    assert fsdp["losses"]["2"] != fsdp["losses"]["2"]  # NaN: the mean over ranks
    assert all(abs(fsdp["losses"][s] - single["losses"][s]) <= 1e-5 for s in ("1", "3"))
    a = weights(list_checkpoints(tmp_path / "fsdp/checkpoints")[-1], "unet_ema")
    b = weights(list_checkpoints(tmp_path / "single/checkpoints")[-1], "unet_ema")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in b) and all(torch.isfinite(v).all() for v in a.values())
