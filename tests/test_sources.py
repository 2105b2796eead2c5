"""Sources: the SAMPLE contract, every source format, sharding, seeding, workers, tar shards."""

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from media_fixtures import (caption_json, frame_index, image_bytes, index_frames, write_tar,
                            write_video)
from tft2v.data.media_source import collate
from tft2v.data.sources import (CLIP_MEAN, CLIP_STD, ListSource, build_source,
                                encoder_image_transform)
from tft2v.errors import TFT2VError

KW = dict(num_frames=4, fps=10, size=(32, 48))


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    """Six 30-frame videos (two containers), captions for the even ones, one in a subfolder."""
    root = tmp_path_factory.mktemp("videos")
    (root / "sub").mkdir()
    for i in range(6):
        ext = ".mp4" if i % 2 == 0 else ".webm"
        path = root / ("sub" if i == 5 else ".") / f"clip{i}{ext}"
        write_video(path, index_frames(30), fps=30)
        if i % 2 == 0:
            path.with_suffix(".txt").write_text(f"caption {i}\n")
    return root


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(5):
        (root / f"im{i}.png").write_bytes(image_bytes(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)))
        (root / f"im{i}.txt").write_text(f"an image {i}")
    return root


def check_sample(sample, frames, size):
    assert set(sample) - {"position"} == {"pixels", "caption", "has_text", "cond_frame", "key", "meta", "epoch"}
    assert sample["pixels"].shape == (3, frames, *size) and sample["pixels"].dtype == torch.float32
    assert -1 <= sample["pixels"].min() and sample["pixels"].max() <= 1
    assert sample["cond_frame"].shape == (3, *size) and sample["cond_frame"].dtype == torch.float32
    assert sample["has_text"] == bool(sample["caption"]) and isinstance(sample["key"], str)


def test_video_folder_with_sidecar_captions(video_dir):
    source = build_source(video_dir, kind="video", **KW)
    samples = {s["key"]: s for s in source}
    assert sorted(samples) == ["clip0", "clip1", "clip2", "clip3", "clip4", "sub/clip5"]
    for s in samples.values():
        check_sample(s, 4, (32, 48))
        assert torch.equal(s["cond_frame"], s["pixels"][:, 2])  # middle frame by default
    assert samples["clip2"]["caption"] == "caption 2" and samples["clip2"]["has_text"]
    assert samples["clip3"]["caption"] == "" and not samples["clip3"]["has_text"]
    assert source.stats.as_dict()["ok"] == 6 and source.stats.skipped == 0


def test_image_folder(image_dir):
    samples = list(build_source(image_dir, kind="image", size=(32, 32)))
    assert len(samples) == 5
    for s in samples:
        check_sample(s, 1, (32, 32))
        assert torch.equal(s["cond_frame"], s["pixels"][:, 0]) and s["caption"].startswith("an image")


def test_cond_frame_options_and_image_transform(video_dir):
    first = next(iter(build_source(video_dir, cond_frame="first", shuffle=False, **KW)))
    assert torch.equal(first["cond_frame"], first["pixels"][:, 0])
    last = next(iter(build_source(video_dir, cond_frame=-1, shuffle=False, **KW)))
    assert torch.equal(last["cond_frame"], last["pixels"][:, 3]) and last["meta"]["cond_index"] == 3
    rand = [s["meta"]["cond_index"] for s in build_source(video_dir, cond_frame="random", **KW)]
    assert len(set(rand)) > 1
    half = build_source(video_dir, image_transform=lambda x: x[:, ::2, ::2] * 0.5, shuffle=False, **KW)
    s = next(iter(half))
    assert s["cond_frame"].shape == (3, 16, 24)
    with pytest.raises(TFT2VError):
        build_source(video_dir, cond_frame=4, **KW)


def test_csv_jsonl_and_vgen_list(video_dir, tmp_path):
    (tmp_path / "m.csv").write_text(f"path,caption\n{video_dir}/clip0.mp4,hello\n")
    (video_dir / "rel.jsonl").write_text(
        json.dumps({"path": "clip1.webm", "caption": "json cap"}) + "\n\n" + json.dumps({"path": "sub/clip5.webm"}))
    (tmp_path / "vgen.txt").write_text("# comment\nclip2.mp4|||a vgen caption\nclip3.webm\n")
    csv_s = list(build_source(tmp_path / "m.csv", **KW))
    assert [s["caption"] for s in csv_s] == ["hello"]
    jsonl = {s["key"]: s for s in build_source(video_dir / "rel.jsonl", **KW)}  # paths relative to manifest
    assert jsonl["clip1.webm"]["caption"] == "json cap" and jsonl["sub/clip5.webm"]["caption"] == ""
    vgen = {s["key"]: s["caption"] for s in build_source(tmp_path / "vgen.txt", data_dir=str(video_dir), **KW)}
    assert vgen == {"clip2.mp4": "a vgen caption", "clip3.webm": ""}


def test_bad_specs_are_one_line_errors(tmp_path):
    (tmp_path / "no_path.csv").write_text("file,caption\na.mp4,x\n")
    (tmp_path / "bad.jsonl").write_text('{"path": "a.mp4"}\nnot json\n')
    for spec, words in [(tmp_path / "missing", "not found"), (tmp_path / "no_path.csv", "'path' column"),
                        (tmp_path / "bad.jsonl", "bad.jsonl:2"), (tmp_path, "lists no video")]:
        with pytest.raises(TFT2VError, match=words):
            build_source(spec, **KW)
    with pytest.raises(TFT2VError, match="rank"):
        ListSource([], rank=2, world_size=2)


def keys_of(source):
    return [s["key"] for s in source]


def test_seeded_shuffle_epochs_and_rank_sharding(video_dir):
    a = build_source(video_dir, seed=1, **KW)
    order1 = keys_of(a)
    assert order1 == keys_of(build_source(video_dir, seed=1, **KW))
    a.set_epoch(1)
    assert sorted(keys_of(a)) == sorted(order1) and keys_of(a) != order1
    assert keys_of(build_source(video_dir, shuffle=False, **KW)) == sorted(order1)
    ranks = [keys_of(build_source(video_dir, seed=1, rank=r, world_size=3, **KW)) for r in range(3)]
    assert sorted(sum(ranks, [])) == sorted(order1) and all(len(r) == 2 for r in ranks)


def test_clip_randomness_depends_on_seed_and_epoch_not_on_sharding(video_dir):
    whole = {s["key"]: s["meta"]["times"] for s in build_source(video_dir, seed=4, **KW)}
    split = {s["key"]: s["meta"]["times"]
             for r in range(2) for s in build_source(video_dir, seed=4, rank=r, world_size=2, **KW)}
    assert whole == split
    other = build_source(video_dir, seed=4, **KW)
    other.set_epoch(3)
    assert {s["key"]: s["meta"]["times"] for s in other} != whole


@pytest.mark.slow
@pytest.mark.parametrize("context", ["fork", "forkserver", "spawn"])
def test_dataloader_workers_cover_everything_and_share_stats(video_dir, tmp_path, context):
    (tmp_path / "m.jsonl").write_text("".join(
        json.dumps({"path": str(p)}) + "\n" for p in [*sorted(video_dir.glob("*.mp4")), tmp_path / "gone.mp4"]))
    source = build_source(tmp_path / "m.jsonl", seed=0, **KW)
    loader = DataLoader(source, batch_size=2, num_workers=2, collate_fn=collate,
                        multiprocessing_context=context, persistent_workers=True)
    orders = []
    for epoch in range(2):
        source.set_epoch(epoch)  # must reach the persistent workers
        batches = list(loader)
        orders.append([k for b in batches for k in b["key"]])
        assert sorted(orders[-1]) == sorted(str(p) for p in video_dir.glob("*.mp4"))
    assert orders[0] != orders[1]
    assert batches[0]["pixels"].shape[1:] == (3, 4, 32, 48) and batches[0]["has_text"].dtype == torch.bool
    assert source.stats.as_dict()["ok"] == 6 and source.stats.as_dict()["missing"] == 2


def tar_members(start, n, kind):
    members = []
    for i in range(start, start + n):
        if kind == "video":
            members.append((f"{i:05d}.mp4", index_frames_video_bytes(i)))
            members.append((f"{i:05d}.json", caption_json(f"video {i}" if i % 2 else "")))
        else:
            members.append((f"{i:05d}.jpg", image_bytes(np.full((24, 36, 3), i * 10, np.uint8), "JPEG")))
            members.append((f"{i:05d}.txt", f"image {i}".encode()))
    return members


_VIDEO_BYTES = {}


def index_frames_video_bytes(i):
    if "v" not in _VIDEO_BYTES:
        import tempfile, pathlib
        with tempfile.TemporaryDirectory() as d:
            _VIDEO_BYTES["v"] = write_video(pathlib.Path(d) / "v.mp4", index_frames(12), fps=12).read_bytes()
    return _VIDEO_BYTES["v"]


def test_webdataset_video_shards_with_brace_pattern(tmp_path):
    for shard in range(3):
        write_tar(tmp_path / f"shard-{shard:02d}.tar", tar_members(shard * 3, 3, "video"))
    spec = str(tmp_path / "shard-{00..02}.tar")
    source = build_source(spec, kind="video", num_frames=4, fps=6, size=(24, 32), seed=2, shuffle_buffer=4)
    samples = list(source)
    assert sorted(s["key"] for s in samples) == [f"{i:05d}" for i in range(9)]
    for s in samples:
        check_sample(s, 4, (24, 32))
        assert s["caption"] == (f"video {int(s['key'])}" if int(s["key"]) % 2 else "")
        assert [frame_index(f) for f in ((s["pixels"].permute(1, 2, 3, 0) + 1) * 127.5).round().byte().numpy()] \
            == [round(t * 12) for t in s["meta"]["times"]]
    assert keys_of(build_source(spec, num_frames=4, fps=6, size=(24, 32), seed=2, shuffle_buffer=4)) == \
        [s["key"] for s in samples]
    shards = [keys_of(build_source(spec, num_frames=4, fps=6, size=(24, 32), rank=r, world_size=2))
              for r in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(s["key"] for s in samples) and not set(shards[0]) & set(shards[1])


def test_m4v_and_ts_are_videos_in_folders_and_tar_shards(tmp_path):
    """Folder scans and tar members read the one list of video types (tft2v.data.media_types)."""
    folder = tmp_path / "clips"
    folder.mkdir()
    clips = [write_video(folder / name, index_frames(20), fps=20, codec="libx264") for name in ("a.m4v", "b.ts")]
    assert sorted(s["key"] for s in build_source(str(folder), kind="video", **KW)) == ["a", "b"]
    shard = write_tar(tmp_path / "s.tar", [(c.name, c.read_bytes()) for c in clips])
    samples = list(build_source(str(shard), kind="video", **KW))
    assert sorted(s["meta"]["source"] for s in samples) == [f"{shard}#a.m4v", f"{shard}#b.ts"]
    for s in samples:
        check_sample(s, 4, KW["size"])


def test_webdataset_image_shard_fewer_shards_than_ranks(tmp_path):
    path = write_tar(tmp_path / "images.tar", tar_members(0, 6, "image"))
    parts = [keys_of(build_source(str(path), kind="image", size=(16, 16), rank=r, world_size=4)) for r in range(4)]
    assert sorted(sum(parts, [])) == [f"{i:05d}" for i in range(6)] and all(parts[:2])
    s = next(iter(build_source(str(path), kind="image", size=(16, 16), shuffle=False)))
    assert s["caption"] == "image 0" and s["pixels"].shape == (3, 1, 16, 16)


def test_list_source_len(video_dir):
    assert len(build_source(video_dir, **KW)) == 6 and isinstance(build_source(video_dir, **KW), ListSource)


def test_encoder_image_transform_resizes_crops_and_normalises(video_dir):
    source = build_source(video_dir, image_transform=encoder_image_transform(20), shuffle=False, **KW)
    s = next(iter(source))
    assert s["cond_frame"].shape == (3, 20, 20)
    gray = torch.zeros(3, 32, 48)  # mid gray in [-1, 1] → 0.5 before normalisation
    out = encoder_image_transform((16, 8))(gray)
    assert out.shape == (3, 16, 8)
    want = (0.5 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(out[:, 4, 4], want, atol=1e-5)
