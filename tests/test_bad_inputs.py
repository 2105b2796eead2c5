"""Bad input through the CLI (generate, convert): one line ``error: …`` on stderr, exit 2, no traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from media_fixtures import write_video
from pipeline_fixtures import toy_model_folder

from tft2v.cli import main


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Paths the cases use: a good model, broken copies of it, media and junk files."""
    root = tmp_path_factory.mktemp("bad")
    good = toy_model_folder(root / "good")
    paths = {"root": root, "good": good, "file": root / "junk.bin", "empty": root / "empty"}
    paths["file"].write_bytes(b"\x00\x01 not a checkpoint, not a video \xff" * 20)
    paths["empty"].mkdir()
    for name in ("no_encoder", "bad_json", "wrong_class", "bad_unet"):
        shutil.copytree(good, root / name)
        paths[name] = root / name
    shutil.rmtree(root / "no_encoder" / "encoder")
    (root / "bad_json" / "model_index.json").write_text("{not json")
    index = json.loads((good / "model_index.json").read_text())
    (root / "wrong_class" / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionPipeline"}))
    weights = next((root / "bad_unet" / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:200])
    paths["video"] = write_video(root / "clip.mp4", np.full((6, 16, 16, 3), 90, np.uint8), fps=8)
    paths["comments"] = root / "prompts.txt"
    paths["comments"].write_text("# only a comment\n\n")
    paths["nonempty_out"] = root / "taken"
    (paths["nonempty_out"]).mkdir()
    (paths["nonempty_out"] / "x").write_text("x")
    paths["cfg"] = root / "cfg.json"
    paths["cfg"].write_text(json.dumps({"dim": 32, "flux_capacitor": True}))
    import torch

    torch.save({"foo.weight": torch.zeros(2)}, root / "notvgen.pth")
    paths["notvgen"] = root / "notvgen.pth"
    return paths


def gen(model_key, *extra):
    return lambda p: ["generate", "--model", str(p[model_key]), "a red circle", "--steps", "1", *[
        str(p[x[1:]]) if x.startswith("@") else x for x in extra]]


CASES = [
    # (id, argv builder, expected text in the one-line message)
    ("unknown-model-dir", lambda p: ["generate", "--model", str(p["root"] / "nope"), "a cat"], "does not exist"),
    ("model-is-a-file", gen("file"), "is a file, not a model folder"),
    ("not-a-model-folder", gen("empty"), "has no model_index.json"),
    ("corrupt-model-index", gen("bad_json"), "cannot parse"),
    ("wrong-pipeline-class", gen("wrong_class"), "does not describe a TFT2VPipeline"),
    ("missing-component", gen("no_encoder"), "missing component 'encoder'"),
    ("corrupt-unet-weights", gen("bad_unet"), "cannot load the UNet"),
    ("height-not-multiple-of-stride", gen("good", "--height", "15"), "height 15 must be a multiple of 2"),
    ("width-not-multiple-of-stride", gen("good", "--width", "17"), "width 17 must be a multiple of 2"),
    ("zero-frames", gen("good", "--frames", "0"), "--frames"),
    ("zero-steps", gen("good", "--steps", "0"), "--steps"),
    ("too-many-steps", gen("good", "--steps", "5000"), "num_inference_steps 5000 exceeds the scheduler's 1000"),
    ("zero-height", gen("good", "--height", "0"), "--height"),
    ("zero-videos", gen("good", "--num-videos", "0"), "--num-videos"),
    ("negative-guidance", gen("good", "--guidance", "-1"), "--guidance"),
    ("negative-seed", gen("good", "--seed", "-1"), "--seed"),
    ("non-integer-seed", gen("good", "--seed", "abc"), "--seed"),
    ("unknown-scheduler", gen("good", "--scheduler", "warp"), "unknown scheduler 'warp'"),
    ("unknown-dtype", gen("good", "--dtype", "fp8"), "--dtype must be one of"),
    ("bad-device", gen("good", "--device", "tpu9"), "is not a torch device"),
    ("bad-out-suffix", gen("good", "--out", "video.avi"), "use a .mp4 or .gif file"),
    ("no-prompt", lambda p: ["generate", "--model", str(p["good"])], "give a prompt"),
    ("missing-prompts-file", gen("good", "--prompts", "nope.txt"), "prompts file nope.txt not found"),
    ("prompts-file-without-prompts", gen("good", "--prompts", "@comments"), "holds no prompts"),
    ("missing-condition-video", gen("good", "--sketch", "nope.mp4"), "--sketch video nope.mp4 not found"),
    ("undecodable-condition-video", gen("good", "--motion", "@file"), "cannot read --motion video"),
    ("unreadable-local-image", gen("good", "--local-image", "@file"), "cannot read --local-image image"),
    ("condition-model-lacks", gen("good", "--sketch", "@video"), "not trained with the 'sketch' condition"),
    ("depth-without-model", gen("good", "--depth", "@video"), "--depth needs --depth-model"),
    ("unknown-option", gen("good", "--frobnicate"), "--frobnicate"),
    ("convert-missing-checkpoint", lambda p: ["convert", "vgen", str(p["root"] / "no.pth"), str(p["root"] / "o1")],
     "checkpoint not found"),
    ("convert-garbage-checkpoint", lambda p: ["convert", "vgen", str(p["file"]), str(p["root"] / "o2")],
     "cannot read checkpoint"),
    ("convert-not-vgen", lambda p: ["convert", "vgen", str(p["notvgen"]), str(p["root"] / "o3")],
     "not a VGen TF-T2V UNet state dict"),
    ("convert-unknown-config-key", lambda p: ["convert", "vgen", str(p["notvgen"]), str(p["root"] / "o4"),
                                              "--config", str(p["cfg"])], "unknown VGen UNet config key(s): flux_capacitor"),
    ("convert-bad-resolution", lambda p: ["convert", "vgen", str(p["notvgen"]), str(p["root"] / "o5"), "--config",
                                          str(p["cfg"]), "--resolution", "wide"], "--resolution must look like WxH"),
    ("convert-missing-config", lambda p: ["convert", "vgen", str(p["notvgen"]), str(p["root"] / "o6"),
                                          "--config", str(p["root"] / "none.yaml")], "config file"),
    ("convert-sd21-missing", lambda p: ["convert", "sd21", str(p["root"] / "nosd"), str(p["root"] / "o7")], "not found"),
    ("convert-sd21-bad-prediction", lambda p: ["convert", "sd21", str(p["file"]), str(p["root"] / "o8"),
                                               "--prediction-type", "x0"], "--prediction-type must be one of"),
    ("convert-unknown-source", lambda p: ["convert", "ldm", "a", "b"], "No such command"),
]


@pytest.mark.parametrize("argv, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(env, capsys, monkeypatch, tmp_path, argv, expected):
    monkeypatch.chdir(tmp_path)  # a case that wrongly succeeds must not drop out.mp4 into the repository
    with pytest.raises(SystemExit) as exit_info:
        main(argv(env))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert expected in lines[0], lines[0]


def test_convert_into_a_non_empty_folder(env, capsys, tmp_path):
    from test_convert_cli import tiny_vgen_unet, write_vgen_checkpoint

    write_vgen_checkpoint(tmp_path / "t.pth", tiny_vgen_unet())
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "vgen", str(tmp_path / "t.pth"), str(env["nonempty_out"]), "--head-dim", "16"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "exists and is not empty" in err and len(err.strip().splitlines()) == 1


def test_console_script_prints_no_traceback(env):
    result = subprocess.run([sys.executable, "-m", "tft2v.cli", "generate", "--model", str(env["no_encoder"]), "x"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "Traceback" not in result.stderr
