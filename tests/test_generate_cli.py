"""``tft2v generate`` end to end on tiny model folders: playable mp4, seeds, schedulers, prompts files,
compositional conditions extracted from real video files, help text."""

from __future__ import annotations

import subprocess
import sys

import av
import numpy as np
import pytest
from media_fixtures import write_video
from PIL import Image
from pipeline_fixtures import toy_model_folder

from cli_run import run

COMPOSITIONAL = dict(conditions=("sketch", "depth", "motion", "masked", "local_image", "single_sketch"),
                     condition_channels=4, condition_pixel_size=(128, 128))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return toy_model_folder(tmp_path_factory.mktemp("toy") / "model")


@pytest.fixture(scope="module")
def comp_model(tmp_path_factory):
    return toy_model_folder(tmp_path_factory.mktemp("comp") / "model", **COMPOSITIONAL)


def frames_of(path) -> np.ndarray:
    if path.is_dir():
        return np.stack([np.asarray(Image.open(p)) for p in sorted(path.glob("*.png"))])
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def moving_bar_video(path, frames=6, size=(24, 40)):
    """A bright vertical bar moving right on a dark background (edges, motion, depth all non-trivial)."""
    h, w = size
    clip = np.full((frames, h, w, 3), 20, np.uint8)
    for i in range(frames):
        clip[i, 4:-4, 6 + 3 * i : 14 + 3 * i] = (230, 200, 40)
    return write_video(path, clip, fps=8)


def test_generate_writes_a_playable_mp4(model, tmp_path, capsys):
    out = tmp_path / "a.mp4"
    code, stdout, _ = run(["generate", "--model", str(model), "a red circle moving left", "--out", str(out)], capsys)
    assert code == 0
    assert f"wrote {out}" in stdout
    frames = frames_of(out)
    assert frames.shape == (4, 16, 16, 3)
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name in ("h264", "mpeg4")
        assert float(container.streams.video[0].average_rate) == 4  # the model folder's fps


def test_same_seed_same_video(model, tmp_path, capsys):
    args = ["generate", "--model", str(model), "a blue square", "--steps", "2"]
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        assert run(args + ["--seed", seed, "--out", str(tmp_path / name)], capsys)[0] == 0
    a, b, c = (frames_of(tmp_path / n) for n in "abc")
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 0.5


@pytest.mark.parametrize("scheduler", ["ddim", "dpmpp"])
def test_schedulers_and_bf16(model, tmp_path, capsys, scheduler):
    out = tmp_path / f"{scheduler}.gif"
    code, _, _ = run(["generate", "--model", str(model), "a red circle", "--scheduler", scheduler, "--steps", "2",
                      "--dtype", "bf16", "--out", str(out)], capsys)
    assert code == 0
    with Image.open(out) as im:
        assert im.n_frames == 4 and im.size == (16, 16)


def test_prompts_file_and_num_videos_name_every_file(model, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# shapes\na red circle\n\na green triangle\n")
    code, stdout, _ = run(["generate", "--model", str(model), "--prompts", str(prompts), "--num-videos", "2",
                           "--steps", "1", "--frames", "2", "--out", str(tmp_path / "v.mp4")], capsys)
    assert code == 0
    names = sorted(p.name for p in tmp_path.glob("v_*.mp4"))
    assert names == ["v_000_00.mp4", "v_000_01.mp4", "v_001_00.mp4", "v_001_01.mp4"]
    assert stdout.count("wrote ") == 4 and "seed 3" in stdout
    assert frames_of(tmp_path / "v_001_01.mp4").shape == (2, 16, 16, 3)


@pytest.mark.slow
def test_compositional_conditions_from_video_files(comp_model, tmp_path, capsys):
    video = moving_bar_video(tmp_path / "bar.mp4")
    Image.fromarray(np.full((20, 20, 3), 200, np.uint8)).save(tmp_path / "still.png")
    base = ["generate", "--model", str(comp_model), "a yellow square", "--steps", "2"]
    assert run(base + ["--out", str(tmp_path / "plain")], capsys)[0] == 0
    plain = frames_of(tmp_path / "plain")
    for flags in (["--sketch", str(video)], ["--depth", str(video), "--depth-model", "luminance"],
                  ["--motion", str(video), "--single-sketch", str(video)], ["--masked", str(video)],
                  ["--local-image", str(tmp_path / "still.png")]):
        out = tmp_path / flags[0].strip("-")
        code, _, err = run(base + flags + ["--out", str(out)], capsys)
        assert code == 0, err
        frames = frames_of(out)
        assert frames.shape == plain.shape
        assert np.abs(frames.astype(int) - plain.astype(int)).mean() > 0.1, flags


def test_help_has_examples_and_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "tft2v.cli", "generate", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "Examples" in result.stdout and "--sketch" in result.stdout and "--scheduler" in result.stdout
