"""``tft2v eval --model DIR --prompts FILE --reference DIR``: sample a tiny toy model, then score the samples
against ``tft2v data toy`` clips (FVD, FID, CLIPSIM, frame consistency, toy metrics) in one command."""

from __future__ import annotations

import json

import pytest
from metrics_reference import converted_weights, write_tiny_clip, write_tiny_i3d, write_tiny_inception

from tests.pipeline_fixtures import toy_model_folder
from cli_run import run
from tft2v.cli import main
from tft2v.metrics.i3d import file_sha256

PROMPTS = "a red circle moving left\n# comment lines are skipped\n\na blue square moving up\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny toy model folder (4 frames of 16×16 by default), 4 toy reference clips (16 frames of 32×32),
    a prompts file and tiny random metric networks."""
    root = tmp_path_factory.mktemp("eval_model")
    toy_model_folder(root / "model")
    with pytest.raises(SystemExit) as e:
        main(["data", "toy", str(root / "toy"), "--num-images", "0", "--num-videos", "4", "--num-captioned", "0"])
    assert e.value.code == 0
    (root / "prompts.txt").write_text(PROMPTS)
    return {"root": root, "model": root / "model", "reference": root / "toy" / "videos",
            "prompts": root / "prompts.txt", "i3d": write_tiny_i3d(root / "i3d.pt"),
            "inception": write_tiny_inception(root / "inception.pth"), "clip": write_tiny_clip(root / "clip")}


def test_eval_model_samples_and_scores_in_one_command(setup, tmp_path, capsys):
    s = setup
    out = tmp_path / "report" / "metrics.json"
    code, stdout, err = run(["eval", "--model", str(s["model"]), "--prompts", str(s["prompts"]), "--reference",
                             str(s["reference"]), "--i3d", str(s["i3d"]), "--inception", str(s["inception"]),
                             "--clip", str(s["clip"]), "--toy", "--seeds", "0-1", "--steps", "2", "--guidance", "3",
                             "--frames", "8", "--sample-batch", "3", "--eval-frames", "8", "--out", str(out),
                             "--device", "cpu"], capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["num_videos"] == 4 and res["num_reference"] == 4  # 2 prompts × 2 seeds
    for key in ("fvd", "fid", "clipsim", "frame_consistency"):
        assert res[key] == res[key] and key not in res["skipped"], key  # a number, not NaN
    assert res["fvd"] > 0 and res["fid"] > 0 and res["fid_num_frames"] == 4 * 8
    assert res["toy"]["num_clips"] == 4
    assert res["clip_shapes"] == {"generated": {"8x16x16": 4}, "reference": {"8x32x32": 4}}
    p = res["protocol"]
    assert p["sampling"]["seeds"] == [0, 1] and p["sampling"]["steps"] == 2 and p["sampling"]["guidance"] == 3.0
    assert p["sampling"]["num_prompts"] == 2 and p["sampling"]["frames"] == 8 and p["sampling"]["resolution"] == "16x16"
    assert p["eval_frames"] == 8 and p["frame_stride"] == 1
    assert p["fvd"]["sha256"] == file_sha256(s["i3d"]) and p["fid"]["sha256"] == file_sha256(s["inception"])
    assert "224x224" in p["fvd"]["preprocess"] and "299x299" in p["fid"]["preprocess"]
    assert any("published FVD uses 16 frames" in n for n in p["notes"])
    samples = out.parent / "metrics_samples"
    videos = sorted(samples.glob("*.mp4"))
    assert [v.name for v in videos] == ["00000_seed0.mp4", "00001_seed1.mp4", "00002_seed0.mp4", "00003_seed1.mp4"]
    assert videos[2].with_suffix(".txt").read_text().strip() == "a blue square moving up"
    md = out.with_suffix(".md").read_text()
    assert "Protocol:" in md and "sha256 " + file_sha256(s["i3d"]) in md and "| FVD (I3D) |" in md
    assert "2 prompts" in md and "seeds [0, 1]" in md and "Frames per clip: the first 8 frames at stride 1" in md
    # The written samples are lossless: scoring the files gives the in-memory scores exactly.
    again = tmp_path / "again.json"
    code, _, err = run(["eval", "--videos", str(samples), "--reference", str(s["reference"]), "--i3d", str(s["i3d"]),
                        "--inception", str(s["inception"]), "--eval-frames", "8", "--out", str(again)], capsys)
    assert code == 0, err
    res2 = json.loads(again.read_text())
    assert res2["fvd"] == pytest.approx(res["fvd"], rel=1e-9) and res2["fid"] == pytest.approx(res["fid"], rel=1e-9)


def test_eval_frames_and_stride_pick_the_scored_frames(setup, tmp_path, capsys):
    """--eval-frames N --frame-stride S scores frames 0, S, …, (N-1)S of every clip in both sets."""
    s = setup
    out = tmp_path / "m.json"
    code, _, err = run(["eval", "--videos", str(s["reference"]), "--reference", str(s["reference"]), "--i3d",
                        str(s["i3d"]), "--eval-frames", "4", "--frame-stride", "3", "--out", str(out)], capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["fvd"] == pytest.approx(0.0, abs=1e-6)  # the same clips on both sides
    assert res["clip_shapes"] == {"generated": {"4x32x32": 4}, "reference": {"4x32x32": 4}}
    assert res["protocol"]["frame_stride"] == 3


def test_eval_model_errors_are_one_line(setup, tmp_path, capsys):
    s = setup
    base = ["eval", "--model", str(s["model"]), "--prompts", str(s["prompts"]), "--reference", str(s["reference"])]
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.mp4").write_bytes(b"")
    cases = [
        (base + ["--i3d", str(s["i3d"])], "FVD compares clips of one length: samples would give 4 frames"),
        (base + ["--toy", "--eval-frames", "5"], "each sampled video has 4 frames; --eval-frames 5"),
        (base + ["--toy", "--seeds", "3-1"], "--seeds must look like"),
        (base + ["--toy", "--seeds", "1,1"], "repeats a seed"),
        (base + ["--toy", "--samples", str(tmp_path / "busy")], "is not empty"),
        (["eval", "--model", str(s["model"]), "--toy"], "--model needs --prompts FILE"),
        (["eval", "--model", str(s["model"]), "--videos", str(s["reference"]), "--toy"], "give either --videos"),
        (["eval", "--videos", str(s["reference"]), "--toy", "--steps", "3"], "--steps only apply to --model"),
        (["eval", "--videos", str(s["reference"]), "--i3d", str(s["i3d"])], "FVD / FID need --reference"),
        (base[:5] + ["--toy", "--prompts", str(tmp_path / "none.txt")], "prompts file not found"),
        (base + ["--inception", str(s["i3d"])], "not an InceptionV3 checkpoint"),
    ]
    for argv, message in cases:
        code, _, err = run(argv, capsys)
        assert code == 2 and err.startswith("error: ") and message in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err


@pytest.mark.slow  # the real I3D and InceptionV3 on CPU (~1 min)
def test_eval_model_with_the_real_networks(setup, tmp_path, capsys):
    """End to end with the real FVD / FID networks (converted once per run from the registry packages)."""
    s = setup
    i3d, inception = converted_weights("i3d"), converted_weights("inception")
    out = tmp_path / "real.json"
    reference = str(s["reference"] / "00000[01].mp4")  # a glob: 2 of the toy clips
    code, stdout, err = run(["eval", "--model", str(s["model"]), "--prompts", str(s["prompts"]), "--reference",
                             reference, "--i3d", str(i3d), "--inception", str(inception), "--frames", "16",
                             "--steps", "2", "--out", str(out), "--device", "cpu"], capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["num_videos"] == 2 and res["num_reference"] == 2
    assert res["fvd"] > 1.0 and res["fid"] > 1.0  # untrained 16×16 noise vs toy clips: far apart
    assert res["protocol"]["fvd"]["sha256"] == file_sha256(i3d) and res["protocol"]["fid"]["sha256"] == file_sha256(inception)
    assert res["protocol"]["eval_frames"] == "all" and not any("16 frames" in n for n in res["protocol"]["notes"])
    assert "I3D Kinetics-400" in stdout and "InceptionV3 FID graph" in stdout
