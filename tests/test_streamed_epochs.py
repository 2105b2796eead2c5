"""Streamed tar shards (``pipe:`` here, http or .tar.gz alike) over several epochs: each epoch a new
shard order, shuffle buffer and clip windows, the right epoch on every sample, exact resume by position.

The shards are written by the test and read through ``pipe:cat``, the path remote data takes; the
readers are 2 DataLoader workers, as in training.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from media_fixtures import image_bytes, index_frames, write_tar, write_video
from test_real_files_training import ENV, REPO, overrides, rows
from tft2v.data.mixing import MixConfig, MixedLoader
from tft2v.data.sources import build_source
from tft2v.data.sources_webdataset import EPOCH_SPAN, ShardStream, TarShardSource
from tft2v.errors import TFT2VError

SHARDS, PER_SHARD, EPOCHS = 4, 3, 3
CLIPS = SHARDS * PER_SHARD
KW = dict(num_frames=4, fps=6, size=(16, 16), seed=5, shuffle_buffer=4)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """``pipe:cat`` spec of 4 shards × 3 H.264 clips (24 frames, 12 fps); shard 2 also holds a
    corrupt clip, which every epoch skips and counts."""
    root = tmp_path_factory.mktemp("stream_shards")
    clip = write_video(root / "clip.mp4", index_frames(24), fps=12).read_bytes()
    for s in range(SHARDS):
        members = [m for i in range(s * PER_SHARD, (s + 1) * PER_SHARD)
                   for m in ((f"v{i:02d}.mp4", clip), (f"v{i:02d}.txt", f"clip {i}".encode()))]
        if s == 2:
            members.insert(2, ("broken.mp4", b"not a video"))
        write_tar(root / f"shard-{s}.tar", members)
    return f"pipe:cat {root}/shard-{{0..{SHARDS - 1}}}.tar"


def stream(spec: str, num_workers: int = 2) -> ShardStream:
    source = build_source(spec, kind="video", **KW)
    assert isinstance(source, TarShardSource)
    return ShardStream(source, num_workers=num_workers)


def take(iterator, n: int) -> list[dict]:
    return [s for _, s in zip(range(n), iterator)]


@pytest.fixture(scope="module")
def three_epochs(shards) -> tuple[list[dict], ShardStream]:
    s = stream(shards)
    return take(s.iter_from(0), EPOCHS * CLIPS), s


def test_every_epoch_has_each_clip_once_in_a_new_order_with_new_windows(three_epochs):
    samples, s = three_epochs
    assert [x["epoch"] for x in samples] == [e for e in range(EPOCHS) for _ in range(CLIPS)]
    keys = [f"v{i:02d}" for i in range(CLIPS)]
    epochs = [samples[e * CLIPS:(e + 1) * CLIPS] for e in range(EPOCHS)]
    assert all(sorted(x["key"] for x in ep) == keys for ep in epochs)
    orders = [[x["key"] for x in ep] for ep in epochs]
    assert orders[0] != orders[1] and orders[1] != orders[2] and orders[0] != orders[2]
    windows = [{x["key"]: x["meta"]["times"][0] for x in ep} for ep in epochs]
    for a, b in ((0, 1), (1, 2)):
        assert sum(windows[a][k] != windows[b][k] for k in keys) > CLIPS // 2
    # Positions rise and name (epoch, index in the epoch's pass); the broken clip takes an index too.
    positions = [x["position"] for x in samples]
    assert positions == sorted(set(positions))
    assert [divmod(p, EPOCH_SPAN)[0] for p in positions] == [x["epoch"] for x in samples]
    assert all(max(p % EPOCH_SPAN for p in positions[e * CLIPS:(e + 1) * CLIPS]) <= CLIPS for e in range(EPOCHS))
    assert s.source.stats.as_dict()["corrupt"] == EPOCHS and s.source.epoch == EPOCHS - 1


@pytest.mark.parametrize("cut", [5, CLIPS, CLIPS + 7])  # mid epoch 0, an epoch boundary, mid epoch 1
def test_resume_at_a_position_continues_with_the_same_samples(three_epochs, shards, cut):
    """A fresh source resumed after sample ``cut`` gives the uninterrupted stream's next samples:
    keys, epochs, positions and pixels."""
    samples, _ = three_epochs
    resumed = take(stream(shards).iter_from(samples[cut - 1]["position"] + 1), 8)
    expected = samples[cut:cut + 8]
    assert [(x["key"], x["epoch"], x["position"]) for x in resumed] == \
        [(x["key"], x["epoch"], x["position"]) for x in expected]
    assert all(torch.equal(a["pixels"], b["pixels"]) for a, b in zip(resumed, expected))


def test_workers_do_not_change_an_epochs_clips_or_windows(three_epochs, shards):
    """In-process reading gives epoch 0 the same clips and windows (the order is the readers')."""
    samples, _ = three_epochs
    alone = take(stream(shards, num_workers=0).iter_from(0), CLIPS)
    assert {x["key"]: x["meta"]["times"] for x in alone} == {x["key"]: x["meta"]["times"] for x in samples[:CLIPS]}


def test_mixed_loader_records_epochs_and_resumes(shards):
    """Through the trainer's loader: state_dict's epoch advances, and a resumed loader continues."""
    config = MixConfig(video_batch_size=4, ratio=(0, 1))
    first = MixedLoader(None, stream(shards), config)
    steps = iter(first)
    before = take(steps, 2)
    state = first.state_dict()
    after = take(steps, 2)  # clips 8..15: the end of epoch 0, the start of epoch 1
    assert [e for s in before + after for e in s["video"]["epoch"]] == [0] * CLIPS + [1] * 4
    assert state["epochs"] == {"videos": 0} and first.state_dict()["epochs"] == {"videos": 1}
    second = MixedLoader(None, stream(shards), config)
    second.load_state_dict(state)
    assert [(s["video"]["key"], s["video"]["epoch"]) for s in take(iter(second), 2)] == \
        [(s["video"]["key"], s["video"]["epoch"]) for s in after]


def test_a_missing_shard_is_counted_and_the_epoch_goes_on(shards):
    """``cat`` of a missing file fails (exit 1) at read and again at close: one ``bad_shard``, no crash."""
    source = build_source(shards.replace(f"{SHARDS - 1}}}", f"{SHARDS}}}"), kind="video", **KW)
    assert sorted(x["key"] for x in source) == [f"v{i:02d}" for i in range(CLIPS)]  # one epoch
    assert source.stats.as_dict()["bad_shard"] == 1


def test_an_epoch_without_usable_samples_is_an_error(tmp_path):
    write_tar(tmp_path / "bad.tar", [("a.mp4", b"not a video"), ("b.mp4", b"nor this")])
    with pytest.raises(TFT2VError, match="epoch 0 of 1 streamed shards gave rank 0 no usable video samples"):
        next(iter(stream(f"pipe:cat {tmp_path}/bad.tar", num_workers=0)))


def pipe_training(shards: str, tmp_path: Path, out: Path, steps: int, *more: str) -> list[str]:
    """The ``tft2v train`` command over ``pipe:`` video shards and a ``pipe:`` image shard (written once)."""
    root = Path(shards.split()[1]).parent
    if not (tmp_path / "images.tar").is_file():
        images = [(f"i{i:02d}.png", image_bytes(np.full((20, 24, 3), 10 * i, np.uint8))) for i in range(2 * CLIPS)]
        write_tar(tmp_path / "images.tar", [m for name, data in images for m in ((name, data),
                                            (name.replace(".png", ".txt"), f"image {name}".encode()))])
    sets = overrides(root, out, **{"data.videos": shards, "data.images": f"pipe:cat {tmp_path}/images.tar",
                                   "data.video_batch_size": 2, "train.max_steps": steps, "train.checkpoint_every": 4})
    return [sys.executable, "-m", "tft2v.cli", "train", str(REPO / "configs/toy_files.yaml"), *sets, *more]


@pytest.mark.slow
def test_training_over_pipe_shards_logs_advancing_epochs(shards, tmp_path):
    """``tft2v train`` on ``pipe:`` image and video shards with 2 workers: samples.jsonl shows every
    clip and image once per epoch, epochs 0, 1, 2, and a new order each epoch."""
    steps = EPOCHS * CLIPS // 2
    out = tmp_path / "run"
    r = subprocess.run(pipe_training(shards, tmp_path, out, steps), capture_output=True, text=True, cwd=REPO, env=ENV,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    log = rows(out, "samples.jsonl")
    assert [x["epoch"] for x in log] == [s * 2 // CLIPS for s in range(steps)]
    for kind, n in (("videos", CLIPS), ("images", 2 * CLIPS)):
        pairs = [(k, e) for x in log for k, e in zip(x[kind], x[f"{kind[:-1]}_epochs"])]
        orders = [[k for k, e in pairs if e == ep] for ep in range(EPOCHS)]
        assert all(len(o) == n and len(set(o)) == n for o in orders), kind
        assert orders[0] != orders[1] != orders[2], kind

    # Killed with SIGKILL in epoch 2 (after its step-8 checkpoint) and resumed: the streams re-read the
    # current epoch up to their positions and land on the same samples, so losses and log are the same.
    killed = tmp_path / "killed"
    proc = subprocess.Popen(pipe_training(shards, tmp_path, killed, steps), cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and not (killed / "checkpoints" / "step-00000008").is_dir():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its DataLoader workers
    proc.wait()
    at_kill = rows(killed, "samples.jsonl")
    assert 8 <= len(at_kill) < steps and at_kill[-1]["epoch"] == 1
    resumed = subprocess.run(pipe_training(shards, tmp_path, killed, steps, "--resume", "auto"), capture_output=True,
                             text=True, cwd=REPO, env=ENV, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    losses = [[(m["step"], m["loss"]) for m in rows(run, "metrics.jsonl") if "loss" in m] for run in (out, killed)]
    assert losses[0] == losses[1]  # bit-exact
    assert rows(killed, "samples.jsonl") == log
