"""Bucketed training the way it really runs: landscape, portrait and square H.264 clips of different
lengths (some shorter than every bucket) and PNGs in three aspects on disk, ``num_workers=2``, two gloo
ranks (DDP, then FSDP2) with ``grad_accum`` 2 and bf16 autocast, two epochs, a kill -9 in epoch 2.

Checked from outside the trainer through ``samples.jsonl``: every usable clip and image is used once per
epoch (a padded micro-batch may repeat), always in a bucket of its own aspect, in a new order each epoch;
the killed and resumed run has the uninterrupted run's losses and sample log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from bucket_fixtures import ASPECT_OF_BUCKET, BUCKETS, corpus, usable_videos
from test_fsdp import fsdp_env
from test_real_files_training import ENV, REPO, overrides, rows

pytestmark = pytest.mark.slow
STEPS, KILL_AFTER = 6, 3  # a rank's video epoch is 5 micro-batches = 2.5 steps of grad_accum 2


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed_train")
    return root, corpus(root)


def command(root: Path, out: Path, *more: str) -> list[str]:
    sets = overrides(root, out, **{"data.buckets": json.dumps(BUCKETS), "train.max_steps": STEPS,
                                   "train.grad_accum": 2, "train.mixed_precision": "bf16",
                                   "train.checkpoint_every": 1, "train.keep_last": 10})
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "tft2v.cli",
            "train", str(REPO / "configs/toy_files.yaml"), *sets, *more]


def losses(run: Path) -> list[tuple[int, float]]:
    return [(m["step"], m["loss"]) for m in rows(run, "metrics.jsonl") if "loss" in m]


def check_coverage(log: list[dict], meta: dict) -> None:
    for kind, truth in (("videos", {k: v[0] for k, v in meta["videos"].items()}), ("images", meta["images"])):
        expected = usable_videos(meta) if kind == "videos" else set(meta["images"])
        branch = kind[:-1]
        per_epoch: dict[int, Counter] = {}
        order: dict[int, list[str]] = {}
        for x in log:
            for key, epoch, bucket in zip(x[kind], x[f"{branch}_epochs"], x[f"{branch}_buckets"]):
                per_epoch.setdefault(epoch, Counter())[key] += 1
                if x["rank"] == 0:
                    order.setdefault(epoch, []).append(key)
                assert ASPECT_OF_BUCKET["x".join(bucket.split("x")[:2])] == truth[key], (kind, key, bucket)
        for epoch in (0, 1):  # the run covers two whole epochs of both streams
            counts = per_epoch[epoch]
            assert set(counts) == expected, (kind, epoch)
            assert sum(counts.values()) - len(counts) <= 4  # at most one repeated micro-batch pads an epoch
        assert order[0] != order[1]


@pytest.mark.parametrize("backend", ["ddp", "fsdp2"])
def test_two_ranks_kill9_in_epoch_two_resume_equals_uninterrupted(files, tmp_path, backend):
    root, meta = files
    env = {**(fsdp_env() if backend == "fsdp2" else ENV), "OMP_NUM_THREADS": "1"}
    full = tmp_path / "full"
    r = subprocess.run(command(root, full), capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    log = rows(full, "samples.jsonl")
    assert [(x["step"], x["rank"]) for x in log] == [(s, k) for s in range(1, STEPS + 1) for k in (0, 1)]
    check_coverage(log, meta)
    shapes = {(x["step"], x["rank"]): x["video_buckets"][0] for x in log}
    assert any(shapes[(s, 0)] != shapes[(s, 1)] for s in range(1, STEPS + 1))  # ranks held different shapes

    run = tmp_path / "killed"
    proc = subprocess.Popen(command(root, run), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and not (run / "checkpoints" / f"step-{KILL_AFTER:08d}").is_dir():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun, both ranks and their DataLoader workers
    proc.wait()
    at_kill = rows(run, "samples.jsonl")
    assert KILL_AFTER * 2 <= len(at_kill) < STEPS * 2, "the run was not killed between its checkpoint and the end"
    assert at_kill[-1]["epoch"] == 1  # the video stream is in its second epoch

    resumed = subprocess.run(command(root, run, "--resume", "auto"), capture_output=True, text=True, cwd=REPO,
                             env=env, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr
    assert losses(run) == losses(full)  # bit-exact
    assert rows(run, "samples.jsonl") == log
