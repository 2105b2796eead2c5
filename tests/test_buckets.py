"""Aspect / length buckets and the cached file index, on files the tests write (tft2v.data.buckets,
tft2v.data.bucketed, tft2v.data.index)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bucket_fixtures import ASPECT_OF_BUCKET, BUCKETS, corpus, usable_videos
from tft2v.config import load_config
from tft2v.data import index as index_mod
from tft2v.data.bucketed import BucketedSource, kind_buckets
from tft2v.data.buckets import Bucket, assign, frames_at, plan_epoch
from tft2v.data.index import build_index
from tft2v.data.sources import ListSource, SourceStream
from tft2v.errors import ConfigError, TFT2VError

REPO = Path(__file__).resolve().parents[1]
PARSED = tuple(Bucket.coerce("b", b) for b in BUCKETS)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    return root, corpus(root)


def test_bucket_forms_and_errors():
    assert Bucket.coerce("k", "256x448x16:2") == Bucket(256, 448, 16, 2)
    assert Bucket.coerce("k", {"height": 8, "width": 4, "frames": 1, "batch": 3}).name == "8x4x1"
    cfg = load_config(None, ["data.kind=sources", "data.videos=v",
                             'data.buckets=["256x448x16:2","448x256x16:2","320x320x16:2","256x448x1:16"]'])
    assert [b.name for b in cfg.data.buckets] == ["256x448x16", "448x256x16", "320x320x16", "256x448x1"]
    for bad, words in (('["256x448:2"]', "HxWxF:B"), ('["0x4x4:1"]', "positive"),
                       ('[{height: 4, width: 4, frames: 1}]', "exactly the keys"), ('["4x4x1:1","4x4x1:2"]', "twice"),
                       ("[7]", "string HxWxF:B or a mapping")):
        with pytest.raises(ConfigError, match=words):
            load_config(None, ["data.kind=sources", "data.videos=v", f"data.buckets={bad}"])
    with pytest.raises(ConfigError, match="data.kind 'sources'"):
        load_config(None, ['data.buckets=["4x4x1:1"]'])


def test_assign_nearest_aspect_among_buckets_the_clip_fills():
    videos, images = kind_buckets(PARSED, "video"), kind_buckets(PARSED, "image")
    assert [b.frames > 1 for b in videos] == [True] * 4 and [b.frames for b in images] == [1] * 3
    # landscape 24x40 → 16x24 (log-aspect distance 0.105) over 16x16; portrait → 24x16; square → 16x16
    assert videos[assign(24, 40, 12, videos)].name == "16x24x4"
    assert videos[assign(40, 24, 12, videos)].name == "24x16x4"
    assert videos[assign(20, 40, 12, videos)].name == "16x24x4"  # 2:1 is still nearest to 3:2
    # square with 12 frames: 16x16x8 and 16x16x4 tie on aspect, more frames wins; with 6 frames only x4 fits
    assert videos[assign(32, 32, 12, videos)].name == "16x16x8"
    assert videos[assign(32, 32, 6, videos)].name == "16x16x4"
    assert assign(32, 32, 3, videos) is None  # shorter than every bucket
    assert images[assign(40, 24, 1, images)].name == "24x16x1"
    assert frames_at(1.5, 8, 8) == 12 and frames_at(1.5, 30, 8) == 12 and frames_at(0.75, 8, 8) == 6
    assert frames_at(2.0, 4, 8) == 8  # never faster than the stream: 4 fps gives 4 frames a second


def test_plan_is_a_function_of_seed_and_epoch_and_uses_each_sample_once():
    assigned = [0] * 5 + [1] * 4 + [None] * 2 + [2] * 3
    plan, pad = plan_epoch(assigned, PARSED, seed=3, epoch=0, world_size=2)
    assert plan == plan_epoch(assigned, PARSED, seed=3, epoch=0, world_size=2)[0]
    assert len(plan) % 2 == 0 and pad == len(plan) - 7 == 1  # 3 + 2 + 2 micro-batches of batch 2
    used = Counter(i for _, members in plan[:len(plan) - pad] for i in members)
    assert sorted(used) == [i for i, b in enumerate(assigned) if b is not None] and set(used.values()) == {1}
    assert plan[len(plan) - pad:] == plan[:pad]  # padded by repeating from the start
    assert all(assigned[i] == b for b, members in plan for i in members)
    assert all(len(m) <= PARSED[b].batch for b, m in plan)
    assert plan != plan_epoch(assigned, PARSED, seed=3, epoch=1, world_size=2)[0]


def _source(root: Path, kind: str, rank: int = 0, world: int = 1):
    index, _ = build_index(str(root / f"{kind}s"), kind, None, True, str(root / "cache"))
    source = ListSource(index.items, kind=kind, num_frames=4, fps=8, size=(16, 16), seed=5, rank=rank,
                        world_size=world)
    return BucketedSource(source, index, PARSED, f"{kind}s")


def test_two_ranks_two_workers_use_every_sample_once_per_epoch_in_its_own_aspect(files):
    root, meta = files
    for kind, expected in (("video", usable_videos(meta)), ("image", set(meta["images"]))):
        streams = [SourceStream(_source(root, kind, r, 2), num_workers=2) for r in (0, 1)]
        per_rank = streams[0].source.per_rank
        assert all(len(s.source.rank_plan(e)) == per_rank for s in streams for e in range(3))
        got = [[mb for _, mb in zip(range(3 * per_rank), s.iter_from(0))] for s in streams]
        orders = []
        for epoch in range(3):
            batches = [mb for rank in got for mb in rank if mb["epoch"] == epoch]
            keys = Counter(s["key"] for mb in batches for s in mb["samples"])
            assert set(keys) == expected, (kind, epoch)
            assert sum(keys.values()) - len(keys) <= 2 * max(b.batch for b in PARSED)  # only padding repeats
            for mb in batches:
                aspect = ASPECT_OF_BUCKET["x".join(mb["bucket"].split("x")[:2])]
                for s in mb["samples"]:
                    truth = meta["videos"][s["key"]][0] if kind == "video" else meta["images"][s["key"]]
                    assert truth == aspect and tuple(s["pixels"].shape[1:]) == tuple(
                        int(v) for v in (mb["bucket"].split("x")[2], *mb["bucket"].split("x")[:2]))
            orders.append([s["key"] for mb in got[0] if mb["epoch"] == epoch for s in mb["samples"]])
        assert orders[0] != orders[1] != orders[2]
        # A resume at any position continues the same stream, without workers too.
        resumed = [mb for _, mb in zip(range(4), streams[1].source.iter_from(per_rank + 1))]
        assert [[s["key"] for s in mb["samples"]] for mb in resumed] == \
            [[s["key"] for s in mb["samples"]] for mb in got[1][per_rank + 1:per_rank + 5]]


def test_clips_shorter_than_every_bucket_are_counted_skips(files):
    root, meta = files
    source = _source(root, "video")
    assert source.source.stats.as_dict()["too_short"] == len(meta["videos"]) - len(usable_videos(meta))
    assert source.counts == {"16x24x4": 5, "24x16x4": 4, "16x16x4": 3, "16x16x8": 2}


def test_index_is_cached_and_rebuilt_when_a_file_changes(files, tmp_path, monkeypatch):
    root, _ = files
    folder = tmp_path / "v"
    folder.mkdir()
    for name in ("landscape_0", "portrait_0"):
        (folder / f"{name}.mp4").write_bytes((root / "videos" / f"{name}.mp4").read_bytes())
    probes = []
    real = index_mod.probe_geometry
    monkeypatch.setattr(index_mod, "probe_geometry", lambda item, kind: probes.append(item.key) or real(item, kind))
    first, path = build_index(str(folder), "video", None, True, str(tmp_path / "cache"))
    again, same = build_index(str(folder), "video", None, True, str(tmp_path / "cache"))
    assert same == path and len(probes) == 2 and again.geometry == first.geometry
    (folder / "portrait_0.mp4").write_bytes((root / "videos" / "square_0.mp4").read_bytes())
    changed, new = build_index(str(folder), "video", None, True, str(tmp_path / "cache"))
    assert new != path and len(probes) == 4 and changed.geometry[1]["width"] == 32
    os.utime(folder / "landscape_0.mp4", ns=(1, 1))  # same bytes, another mtime: indexed anew
    assert build_index(str(folder), "video", None, True, str(tmp_path / "cache"))[1] not in (path, new)
    path.write_text("{")
    with pytest.raises(TFT2VError, match="unreadable.*delete it"):
        index_mod.read_index(path)


def test_bucket_the_unet_cannot_take_is_a_one_line_error(files, tmp_path):
    root, _ = files
    from test_real_files_training import overrides

    sets = overrides(root, tmp_path / "run", **{"data.buckets": '["16x24x4:2","15x16x1:2"]', "train.max_steps": 1})
    r = subprocess.run([sys.executable, "-m", "tft2v.cli", "train", str(REPO / "configs/toy_files.yaml"), *sets],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode != 0
    assert "data.buckets[1] 15x16x1: height and width must be multiples of 2" in r.stderr
    assert "Traceback" not in r.stderr


def test_streamed_shards_with_buckets_are_refused(files, tmp_path):
    from tft2v.train.data import build_loader

    cfg = load_config(None, ["data.kind=sources", "data.videos=pipe:cat x.tar", "data.images=pipe:cat y.tar",
                             'data.buckets=["16x16x4:1","16x16x1:1"]'])
    with pytest.raises(ConfigError, match="data.buckets need an indexed source"):
        build_loader(cfg)


def test_data_inspect_shows_the_buckets_a_data_set_falls_into(files, tmp_path):
    root, meta = files
    args = [sys.executable, "-m", "tft2v.cli", "data", "inspect", str(root / "videos"), "--json",
            "--index-cache", str(tmp_path), *sum((["--bucket", b] for b in [*BUCKETS[:4], "16x16x16:1"]), [])]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["buckets"] == {"16x24x4": 5, "24x16x4": 4, "16x16x4": 3, "16x16x8": 2, "16x16x16": 0}
    assert report["skipped"] == {"too_short": len(meta["videos"]) - len(usable_videos(meta))}
    assert report["examined"] == len(meta["videos"]) and Path(report["index"]).parent == tmp_path
    r = subprocess.run([*args[:6], "--bucket", "16x24x:2"], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "must look like HxWxF:B" in r.stderr and "Traceback" not in r.stderr
