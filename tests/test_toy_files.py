"""The shapes world written to disk: real formats that decode back to the in-memory data."""

import json

import numpy as np
import pytest
from PIL import Image

from tft2v.data import shapes_spec as spec
from tft2v.data.toy import generate
from tft2v.data.toy_files import read_ground_truth, read_video, write_toy_dataset, write_video
from tft2v.errors import TFT2VError


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "data"
    counts = write_toy_dataset(out, seed=11, num_images=12, num_videos=6, num_captioned=4)
    assert counts == {"images": 12, "videos": 6, "captioned_videos": 4}
    return out


def test_layout_and_manifests(toy_dir):
    assert len(list((toy_dir / "images").glob("*.png"))) == 12
    assert len(list((toy_dir / "images").glob("*.txt"))) == 12
    assert len(list((toy_dir / "videos").glob("*.mp4"))) == 6
    assert not list((toy_dir / "videos").glob("*.txt"))  # text-free: no captions at all
    assert len(list((toy_dir / "captioned_videos").glob("*.txt"))) == 4
    rows = [json.loads(x) for x in (toy_dir / "videos.jsonl").read_text().splitlines()]
    assert rows[0] == {"path": "videos/000000.mp4"}
    rows = [json.loads(x) for x in (toy_dir / "captioned_videos.jsonl").read_text().splitlines()]
    for row in rows:
        assert (toy_dir / row["path"]).is_file()
        assert (toy_dir / row["path"]).with_suffix(".txt").read_text().strip() == row["caption"]
        assert spec.parse_caption(row["caption"])[2] in spec.MOTIONS
    line = (toy_dir / "images.txt").read_text().splitlines()[3]
    path, caption = line.split("|||")
    assert (toy_dir / path).is_file() and caption == (toy_dir / path).with_suffix(".txt").read_text().strip()
    info = json.loads((toy_dir / "info.json").read_text())
    assert info["seed"] == 11 and info["world"]["frames"] == 16


def test_files_decode_to_the_in_memory_data(toy_dir):
    images = generate("images", 12, seed=11)
    for i in (0, 11):
        png = np.array(Image.open(toy_dir / f"images/{i:06d}.png").convert("RGB"))
        assert np.array_equal(png, images.frames[i, 0])
    for kind, n in [("videos", 6), ("captioned_videos", 4)]:
        data = generate(kind, n, seed=11)
        for i in range(n):
            frames = read_video(toy_dir / f"{kind}/{i:06d}.mp4")
            assert frames.shape == (16, 32, 32, 3)
            assert np.abs(frames.astype(int) - data.frames[i]).max() <= 1  # lossless in practice


def test_ground_truth_rows(toy_dir):
    rows = read_ground_truth(toy_dir)
    assert len(rows) == 22
    held = set(spec.HELD_OUT)
    for row in rows:
        assert (toy_dir / row["path"]).is_file()
        assert len(row["track"]) == (1 if row["set"] == "images" else 16)
        if row["set"] != "images":
            assert (row["colour"], row["shape"]) not in held
            assert row["motion"] in spec.MOTIONS
    captioned = [r for r in rows if r["set"] == "captioned_videos"]
    assert all(r["caption"] == spec.caption(r["colour"], r["shape"], r["motion"]) for r in captioned)


def test_regenerating_is_identical(toy_dir, tmp_path):
    write_toy_dataset(tmp_path / "again", seed=11, num_images=12, num_videos=6, num_captioned=4)
    for name in ("ground_truth.jsonl", "images.jsonl", "captioned_videos.txt"):
        assert (tmp_path / "again" / name).read_text() == (toy_dir / name).read_text()
    assert (tmp_path / "again/videos/000002.mp4").read_bytes() == (toy_dir / "videos/000002.mp4").read_bytes()


def test_refuses_non_empty_output(toy_dir):
    with pytest.raises(TFT2VError, match="not empty"):
        write_toy_dataset(toy_dir, num_images=1, num_videos=1, num_captioned=1)


def test_write_video_validates_frames(tmp_path):
    with pytest.raises(TFT2VError, match="uint8"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(TFT2VError, match="even"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 7, 8, 3), dtype=np.uint8))


def test_cli_writes_a_dataset_the_real_loaders_read(tmp_path, capsys):
    import torch

    from tft2v.cli import main
    from tft2v.data.sources import build_source

    out = tmp_path / "cli"
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "toy", str(out), "--seed", "5", "--num-images", "3", "--num-videos", "2",
              "--num-captioned", "2"])
    assert exit_info.value.code == 0
    assert "wrote 3 images, 2 text-free videos and 2 captioned videos" in capsys.readouterr().out
    source = build_source(str(out / "captioned_videos.jsonl"), kind="video", num_frames=16, fps=8,
                          size=(32, 32), shuffle=False, rank=0, world_size=1)
    loaded = {s["caption"]: s for s in source}
    memory = generate("captioned_videos", 2, seed=5)
    for i in range(2):
        sample = loaded[memory.caption(i)]
        assert torch.equal(sample["pixels"], memory.sample(i)["pixels"])  # bit-exact through PyAV
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "toy", str(out)])
    assert exit_info.value.code == 2 and "not empty" in capsys.readouterr().err
