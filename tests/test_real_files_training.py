"""Training the way it really runs: H.264 clips and PNGs on disk (written by ``tft2v data toy``), several
epochs, ``num_workers=2`` DataLoader processes, two gloo ranks, and a kill -9 in the middle of epoch 2.

What is checked from outside the trainer, through ``samples.jsonl`` (``train.log_samples``):
every sample is used exactly once per epoch and never by two ranks in one epoch, epochs reshuffle,
and a resumed run re-decodes nothing it had used before its checkpoint and continues bit-exactly.
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

from tft2v.data.sources import SourceStream, build_source

REPO = Path(__file__).resolve().parents[1]
VIDEOS, IMAGES = 24, 48
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def toy_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_files")
    r = subprocess.run([sys.executable, "-m", "tft2v.cli", "data", "toy", str(root), "--num-images", str(IMAGES),
                        "--num-videos", str(VIDEOS), "--num-captioned", "0", "--size", "32", "--frames", "12"],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(list((root / "videos").glob("*.mp4"))) == VIDEOS
    return root


def overrides(toy_files: Path, out: Path, **extra) -> list[str]:
    sets = {
        "data.kind": "sources", "data.images": str(toy_files / "images"), "data.videos": str(toy_files / "videos"),
        "data.height": 16, "data.width": 16, "data.num_frames": 4, "data.fps": 8, "data.num_workers": 2,
        "data.image_batch_size": 4, "data.video_batch_size": 2,
        "model.unet": "{model_channels: 8, channel_mult: [1, 2], num_res_blocks: 1, attention_scales: [0.5],"
                      " head_dim: 8, init_temporal_heads: 1, norm_num_groups: 4, condition_channels: 0,"
                      " image_embed_dim: null, dropout: 0.0, temporal_conv_dropout: 0.0}",
        "encoder.args": "{text_dim: 16, image_dim: 32, max_length: 4}", "recipe.image_tokens_on_videos": False,
        "optim.lr": 1e-3, "optim.warmup_steps": 1, "train.log_every": 1, "train.checkpoint_every": 0,
        "train.progress": False, "train.trackers": "[]", "train.export": False, "train.log_samples": True,
        "train.validation_prompts": "[]", "out_dir": str(out),
    }
    sets.update(extra)
    return sum((["--set", f"{k}={v}"] for k, v in sets.items()), [])


def rows(run: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (run / name).read_text().splitlines()]


def test_every_epoch_reshuffles_and_redraws_clip_windows(toy_files):
    """Source level, through 2 DataLoader workers: position p of a rank's stream is (epoch, offset),
    each epoch holds every clip once, and the same clip gets a new window in a new epoch."""
    source = build_source(toy_files / "videos", num_frames=4, fps=8, size=(16, 16), seed=3)
    stream = SourceStream(source, num_workers=2)
    samples = [s for _, s in zip(range(3 * VIDEOS), stream.iter_from(0))]
    epochs = [[s for s in samples if s["epoch"] == e] for e in range(3)]
    assert [s["position"] for s in samples] == list(range(3 * VIDEOS))
    assert all(sorted(s["key"] for s in ep) == sorted(source.items[i].key for i in range(VIDEOS)) for ep in epochs)
    orders = [[s["key"] for s in ep] for ep in epochs]
    assert orders[0] != orders[1] != orders[2]
    windows = [{s["key"]: s["meta"]["times"][0] for s in ep} for ep in epochs]
    assert sum(windows[0][k] != windows[1][k] for k in windows[0]) > VIDEOS // 2
    # Resuming at any position continues the same stream, workers or not.
    assert [s["key"] for _, s in zip(range(10), stream.iter_from(31))] == [s["key"] for s in samples[31:41]]
    assert [s["key"] for _, s in zip(range(10), source.iter_from(31))] == [s["key"] for s in samples[31:41]]


@pytest.mark.slow
def test_two_ranks_three_epochs_each_sample_once_per_epoch(toy_files, tmp_path):
    """2 gloo ranks × 2 workers, 3 epochs of 24 clips / 48 images: the sample log shows every key exactly
    once per epoch over both ranks, no key on two ranks in one epoch, and a new order each epoch."""
    out = tmp_path / "ddp"
    steps = 3 * VIDEOS // (2 * 2)  # 3 epochs at 2 ranks x 2 clips per step
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "tft2v.cli",
           "train", str(REPO / "configs/toy_files.yaml"), *overrides(toy_files, out, **{"train.max_steps": steps})]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    log = rows(out, "samples.jsonl")
    assert [(x["step"], x["rank"]) for x in log] == [(s, r) for s in range(1, steps + 1) for r in (0, 1)]
    for kind, n in (("videos", VIDEOS), ("images", IMAGES)):
        per_epoch: dict[int, Counter] = {}
        by_rank: dict[tuple[int, int], set] = {}
        for x in log:
            for key, epoch in zip(x[kind], x[f"{kind[:-1]}_epochs"]):
                per_epoch.setdefault(epoch, Counter())[key] += 1
                by_rank.setdefault((epoch, x["rank"]), set()).add(key)
        assert sorted(per_epoch) == [0, 1, 2]
        for epoch, counts in per_epoch.items():
            assert len(counts) == n and set(counts.values()) == {1}, (kind, epoch)
            assert not by_rank[(epoch, 0)] & by_rank[(epoch, 1)]
        orders = [[k for x in log if x["rank"] == 0 for k, e in zip(x[kind], x[f"{kind[:-1]}_epochs"]) if e == ep]
                  for ep in range(3)]
        assert orders[0] != orders[1] != orders[2]
    metrics = rows(out, "metrics.jsonl")
    assert [m["epoch"] for m in metrics if "loss" in m] == [s * 4 // VIDEOS for s in range(steps)]


DECODE_LOGGER = """
import os, sys
from tft2v.data import sources

_getitem = sources.ListSource.__getitem__

def logged(self, key):  # every decode, in whichever worker process, as "kind key epoch"
    epoch, index, _ = key
    with open(os.environ["DECODE_LOG"], "a") as f:
        f.write(f"{self.kind} {self.items[index].key} {epoch}\\n")
    return _getitem(self, key)

sources.ListSource.__getitem__ = logged  # also in the workers: their fork server imports this file

if __name__ == "__main__":
    from tft2v.cli import main
    sys.argv = ["tft2v", *sys.argv[1:]]
    main()
"""


@pytest.mark.slow
def test_kill9_in_epoch_two_resumes_bit_exactly_without_rereading(toy_files, tmp_path):
    """num_workers=2 on real clips, killed with SIGKILL in epoch 2 after the step-16 checkpoint: the
    resumed run's losses equal the uninterrupted run's bit-exactly, its sample log equals the
    uninterrupted one, and it decodes no sample it had used before the checkpoint (the bound allowed
    is batch x workers x prefetch = 2 x 2 x 2)."""
    steps, every = 22, 8
    launcher = tmp_path / "launch.py"
    launcher.write_text(DECODE_LOGGER)
    extra = {"train.max_steps": steps, "train.checkpoint_every": every}

    def train(out: Path, decode_log: Path, *more: str, wait: bool = True):
        cmd = [sys.executable, str(launcher), "train", str(REPO / "configs/toy_files.yaml"), *overrides(toy_files, out, **extra), *more]
        env = {**ENV, "DECODE_LOG": str(decode_log)}
        if wait:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)

    full = train(tmp_path / "full", tmp_path / "full.decodes")
    assert full.returncode == 0, full.stderr[-3000:]

    run = tmp_path / "killed"
    proc = train(run, tmp_path / "first.decodes", wait=False)
    deadline = time.time() + 600
    while time.time() < deadline and not (run / "checkpoints" / "step-00000016").is_dir():
        time.sleep(0.05)
    while time.time() < deadline and len(rows(run, "samples.jsonl")) < 18:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its DataLoader workers
    proc.wait()
    log_at_kill = rows(run, "samples.jsonl")
    assert 18 <= len(log_at_kill) < steps, "the run was not killed in epoch 2 after its checkpoint"
    assert log_at_kill[-1]["epoch"] == 1  # epochs count from 0: this is the second

    resumed = train(run, tmp_path / "resumed.decodes", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "step-00000016" in resumed.stderr

    def losses(r):
        return [(m["step"], m["loss"]) for m in rows(r, "metrics.jsonl") if "loss" in m]

    assert losses(run) == losses(tmp_path / "full")  # bit-exact: the same floats
    assert rows(run, "samples.jsonl") == rows(tmp_path / "full", "samples.jsonl")
    used = {(kind[:-1], k, e) for x in rows(run, "samples.jsonl") if x["step"] <= 16
            for kind in ("videos", "images") for k, e in zip(x[kind], x[f"{kind[:-1]}_epochs"])}
    lines = (tmp_path / "resumed.decodes").read_text().splitlines()
    decodes = [(kind, key, int(epoch)) for kind, key, epoch in map(str.split, lines)]
    assert len(decodes) >= (steps - 16) * (2 + 4)  # the resumed steps' clips and images were decoded
    redecoded = [d for d in decodes if d in used]
    assert len(redecoded) <= 2 * 2 * 2, redecoded
