"""Two CPU processes (gloo, launched with torchrun, DDP): both ranks read different data yet hold
identical weights after optimizer steps, i.e. gradients are averaged across ranks; and two ranks with
half a global batch each train exactly like one process with all of it (FSDP: tests/test_fsdp.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dist_driver import run

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from train_fixtures import tiny_config
from tft2v.train import Trainer

trainer = Trainer(tiny_config({out!r}, **{{"train.max_steps": 3, "train.checkpoint_every": 3}}))
before = {{k: v.clone() for k, v in trainer.unet.state_dict().items()}}
first = next(iter(trainer.loader))
trainer.loader.load_state_dict({{"step": 0, "video_slots": 0, "consumed": {{}}}})
trainer.run()
rank = trainer.accelerator.process_index
torch.save({{"after": trainer.unet.state_dict(), "before": before, "world": trainer.accelerator.num_processes,
            "keys": first["video"]["key"]}}, f"{out}/rank{{rank}}.pt")
"""


@pytest.mark.slow
def test_two_cpu_ranks_agree_on_weights(tmp_path):
    out = tmp_path / "ddp"
    out.mkdir()
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT.format(tests=str(REPO / "tests"), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # CPU ranks, gloo
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script)], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [torch.load(out / f"rank{i}.pt", weights_only=True) for i in range(2)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert ranks[0]["keys"] != ranks[1]["keys"]  # each rank read its own samples
    for key, w0 in ranks[0]["after"].items():
        assert torch.equal(w0, ranks[1]["after"][key]), key
    changed = [k for k, w in ranks[0]["after"].items() if not torch.equal(w, ranks[0]["before"][k])]
    assert changed, "no weight moved"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3]  # logged once, by rank 0
    assert (out / "checkpoints/step-00000003/rank1.json").is_file()  # per-rank RNG + loader state


@pytest.mark.slow
def test_two_ddp_ranks_match_one_process(tmp_path):
    """tests/dist_driver.py feeds each rank its half of one hand-built global batch of 4 per step."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(REPO / "tests/dist_driver.py"), str(tmp_path / "ddp"), "--steps", "3"],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp/driver_rank0.json").read_text())
    assert ddp["distributed_type"] == "MULTI_CPU" and ddp["world"] == 2
    single = run(tmp_path / "single", 3)
    diffs = [abs(ddp["losses"][s] - single["losses"][s]) for s in single["losses"]]
    assert len(diffs) == 3 and max(diffs) <= 1e-5, diffs
