"""The LoRA demonstration's pieces (issue #15 point 4), at tiny scale: toy-generator options for new
material (default world unchanged), extra toy-encoder words (old prompts bit-identical, recorded in and
restored from an adapter folder), evaluator extras, images-only finetune, and benchmarks/lora_demo.py
end to end on a tiny model (scale 0 bit-exact)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cli_run import run  # noqa: E402
from tft2v.data import shapes_spec as spec  # noqa: E402
from tft2v.data.toy import generate, to_pixels, world_sets  # noqa: E402
from tft2v.errors import TFT2VError  # noqa: E402

ORANGE = {"orange": (245, 140, 30)}
DIAGONAL = {"diagonal": (1, 1)}
# sha256[:16] of frames + captions + motion + colour of generate(kind, 5, seed=7) for the three kinds, taken
# with the generator as it was before the colours/motions options existed.
DEFAULT_WORLD_DIGEST = "6ca3bf6fdb0bc6a7"


def _digest(**kwargs) -> str:
    m = hashlib.sha256()
    for kind in ("images", "videos", "captioned_videos"):
        s = generate(kind, 5, seed=7, **kwargs)
        m.update(s.frames.tobytes())
        m.update("|".join(s.caption(i) for i in range(5)).encode())
        m.update(np.asarray(s.motion, np.int64).tobytes())
        m.update(np.asarray(s.colour, np.int64).tobytes())
    return m.hexdigest()[:16]


# -- generator -----------------------------------------------------------------------------------------

def test_default_world_is_unchanged():
    assert _digest() == DEFAULT_WORLD_DIGEST
    assert _digest(colours=dict(spec.COLOURS), motions=dict(spec.MOTION_VECTORS)) == DEFAULT_WORLD_DIGEST
    assert world_sets() == (None, None)
    assert list(spec.COLOURS) == ["red", "green", "blue", "yellow", "magenta", "cyan"]
    assert spec.MOTIONS == ("left", "right", "up", "down")


def test_generator_new_colour_and_motion():
    colours, motions = world_sets(ORANGE, DIAGONAL, only_extra_colours=True, only_extra_motions=True)
    images = generate("images", 12, seed=1, colours=colours)
    assert {images.caption(i) for i in range(12)} <= {f"a orange {s}" for s in spec.SHAPES}
    assert all(images.truth(i)["colour"] == "orange" for i in range(12))
    pixels = images.frames.reshape(-1, 3)
    assert (pixels == np.array(ORANGE["orange"], np.uint8)).all(axis=1).any()  # solid interior pixels
    clips = generate("videos", 12, seed=1, motions=motions)
    assert all(clips.caption(i) == "" and clips.truth(i)["motion"] == "diagonal" for i in range(12))
    step = clips.track[:, -1] - clips.track[:, 0]  # (n, 2) over F-1 frames
    assert np.allclose(step[:, 0], step[:, 1]) and (step > 0).all()  # down-right, 45 degrees
    speed = np.linalg.norm(step, axis=1) / (clips.frames.shape[1] - 1)
    assert (speed >= 1 - 1e-9).all() and (speed <= 2 + 1e-9).all()  # the spec's speed range along the path
    assert (clips.frames[:, :, 0] <= spec.BACKGROUND_MAX).all()  # still in frame: border rows stay background
    both = generate("captioned_videos", 40, seed=2, colours={**spec.COLOURS, **ORANGE},
                    motions={**spec.MOTION_VECTORS, **DIAGONAL})
    captions = [both.caption(i) for i in range(40)]
    assert any("orange" in c for c in captions) and any(c.endswith("moving diagonal") for c in captions)
    assert any(c.endswith("moving left") for c in captions)
    for bad in ({"Orange": (1, 2, 3)}, {"orange": (20, 20, 20)}, {"red": (1, 200, 3)}, {"x": (1, 2)},
                {"x": (250.5, 0, 0)}):
        with pytest.raises(TFT2VError):
            generate("images", 1, colours=bad)
    for bad in ({"still": (0, 0)}, {"up": (1, 1)}, {"x": (1,)}):
        with pytest.raises(TFT2VError):
            generate("videos", 1, motions=bad)


def test_data_toy_cli_options(tmp_path, capsys):
    out = tmp_path / "new"
    code, _, err = run(["data", "toy", str(out), "--num-images", "3", "--num-videos", "2", "--num-captioned", "0",
                        "--colour", "orange=245,140,30", "--only-colour", "--motion", "diagonal=1,1",
                        "--only-motion"], capsys)
    assert code == 0, err
    assert sorted(p.read_text().strip() for p in (out / "images").glob("*.txt"))[0].startswith("a orange ")
    truth = [json.loads(line) for line in (out / "ground_truth.jsonl").read_text().splitlines()]
    assert {t["motion"] for t in truth if t["set"] == "videos"} == {"diagonal"}
    info = json.loads((out / "info.json").read_text())
    assert info["colours"] == {"orange": [245, 140, 30]} and info["motions"] == {"diagonal": [1.0, 1.0]}
    code, _, _ = run(["data", "toy", str(tmp_path / "plain"), "--num-images", "1", "--num-videos", "0",
                      "--num-captioned", "0"], capsys)
    assert code == 0 and "colours" not in json.loads((tmp_path / "plain" / "info.json").read_text())
    for args in (["--colour", "orange=245,140"], ["--motion", "diagonal"], ["--only-colour"],
                 ["--colour", "orange=10,10,10"]):
        code, out_text, err = run(["data", "toy", str(tmp_path / "bad"), *args], capsys)
        assert code != 0
        message = (out_text + err).strip()
        assert message and ("--colour" in message or "--motion" in message or "colour" in message), message


# -- encoder -------------------------------------------------------------------------------------------

def _old_prompts() -> list[str]:
    prompts = [spec.caption(c, s, m) for c in spec.COLOURS for s in spec.SHAPES for m in (None, *spec.MOTIONS)]
    return prompts + ["", "a purple circle", "moving", "a orange square"]  # the last reads orange as <unk>


def test_encoder_extra_words_leave_old_prompts_bit_identical(tmp_path):
    from tft2v.encoders.toy import UNK, VOCAB, ToyEncoder

    for dims in ((64, 64, 8), (16, 32, 8)):  # text_dim 16 < vocabulary size: no orthogonal room left
        plain = ToyEncoder(*dims, seed=3)
        extra = ToyEncoder(*dims, seed=3, extra_words=["orange", "diagonal"])
        old = [p for p in _old_prompts() if "orange" not in p]
        assert torch.equal(plain.encode_text(old), extra.encode_text(old))
        assert torch.equal(extra.token_embedding[:len(VOCAB)], plain.token_embedding)
        assert plain.token_ids(["a orange circle"])[0, 1] == VOCAB.index(UNK)
        assert extra.token_ids(["a orange circle"])[0, 1] == len(VOCAB)
        assert not torch.equal(plain.encode_text(["a orange circle"]), extra.encode_text(["a orange circle"]))
        # a word's row depends on (seed, word) only, not on the other extra words or their order
        alone = ToyEncoder(*dims, seed=3, extra_words=["diagonal"])
        assert torch.equal(alone.token_embedding[len(VOCAB)], extra.token_embedding[len(VOCAB) + 1])
        assert plain.add_words(["orange", "red", "orange"]) == ["orange"]  # known words are skipped
        assert torch.equal(plain.token_embedding, extra.token_embedding[:len(VOCAB) + 1])
    row = ToyEncoder(64, 64, 8, seed=0, extra_words=["orange"]).token_embedding
    assert row[-1].square().mean().item() == pytest.approx(1.0, rel=1e-5)
    assert (row[-1] @ row[:-1].T).abs().max().item() < 1e-3  # orthogonal to every caption word
    with pytest.raises(TFT2VError):
        ToyEncoder(extra_words=["Orange!"])
    # folder round trip; a folder without extra words is written as before (no extra_words key)
    extra = ToyEncoder(32, 32, 8, seed=1, extra_words=["orange"])
    extra.save_pretrained(tmp_path / "enc")
    back = ToyEncoder.from_pretrained(tmp_path / "enc")
    assert back.extra_words == ("orange",) and torch.equal(back.encode_text(_old_prompts()),
                                                            extra.encode_text(_old_prompts()))
    ToyEncoder(32, 32, 8, seed=1).save_pretrained(tmp_path / "plain")
    assert "extra_words" not in json.loads((tmp_path / "plain" / "config.json").read_text())


def test_adapter_folder_carries_encoder_words(tmp_path):
    """An adapter trained with new words brings them along: load_lora_weights adds them to a fresh
    pipeline's encoder (old prompts unchanged), and a non-toy encoder refuses with a clear error."""
    from pipeline_fixtures import toy_model_folder

    from tft2v.encoders.toy import ToyEncoder
    from tft2v.models import lora
    from tft2v.pipeline import TFT2VPipeline

    model = toy_model_folder(tmp_path / "model")
    pipe = TFT2VPipeline.from_pretrained(model)
    lora.add_adapter(pipe.unet, rank=2, targets=("spatial",))
    lora.save_adapter(pipe.unet, tmp_path / "adapter")
    lora.update_meta(tmp_path / "adapter", encoder_words=["orange"])
    fresh = TFT2VPipeline.from_pretrained(model)
    old = [p for p in _old_prompts() if "orange" not in p]
    before = fresh.encoder.encode_text(old)
    fresh.load_lora_weights(tmp_path / "adapter", adapter_name="orange")
    enc = fresh.encoder
    assert enc.extra_words == ("orange",) and torch.equal(enc.encode_text(old), before)
    want = ToyEncoder(enc.text_dim, enc.image_dim, enc.max_length, enc.seed, extra_words=["orange"])
    assert torch.equal(enc.encode_text(["a orange circle"]), want.encode_text(["a orange circle"]))

    class OtherEncoder(torch.nn.Module):
        kind = "hf_text"

    other = TFT2VPipeline.from_pretrained(model)
    other.encoder = OtherEncoder()
    with pytest.raises(lora.LoraError, match="adds the words"):
        other.load_lora_weights(tmp_path / "adapter")


# -- evaluator -----------------------------------------------------------------------------------------

def test_evaluator_extras_recognise_new_colour_and_motion_on_ground_truth():
    from tft2v.metrics.toy import analyse_clip, evaluate_toy

    extra = {"extra_colours": ORANGE, "extra_motions": DIAGONAL}
    colours, motions = world_sets(ORANGE, DIAGONAL, True, True)
    images = generate("images", 30, seed=4, colours=colours)
    r = evaluate_toy([to_pixels(f) for f in images.frames], [images.caption(i) for i in range(30)], **extra)
    assert r["colour_accuracy"] >= 0.95 and r["shape_accuracy"] >= 0.95
    plain = evaluate_toy([to_pixels(f) for f in images.frames])  # spec-only: orange is some other colour
    assert all(c["colour"] in spec.COLOURS for c in plain["clips"])
    clips = generate("captioned_videos", 20, seed=4, colours=colours, motions=motions)
    prompts = [clips.caption(i) for i in range(20)]
    r = evaluate_toy([to_pixels(f) for f in clips.frames], prompts, **extra)
    assert r["direction_accuracy"] >= 0.95 and r["colour_accuracy"] >= 0.95 and r["coherent_fraction"] >= 0.95
    assert r["direction_alignment"] > 0.99
    assert analyse_clip(to_pixels(clips.frames[0]))["direction"] in spec.MOTIONS  # spec-only: one of the four
    # the spec world scores the same with the extras known to the detector
    old = generate("captioned_videos", 24, seed=5)
    prompts = [old.caption(i) for i in range(24)]
    a = evaluate_toy([to_pixels(f) for f in old.frames], prompts)
    b = evaluate_toy([to_pixels(f) for f in old.frames], prompts, **extra)
    for key in ("colour_accuracy", "shape_accuracy", "direction_accuracy", "coherent_fraction"):
        assert a[key] == b[key] and a[key] >= 0.95
    assert [c["direction"] for c in a["clips"]] == [c["direction"] for c in b["clips"]]


# -- finetune (images only) and the demo ---------------------------------------------------------------

def test_finetune_images_only_spatial_with_new_word(tmp_path, capsys):
    from pipeline_fixtures import toy_model_folder

    from tft2v.models import lora
    from tft2v.pipeline import TFT2VPipeline

    model = toy_model_folder(tmp_path / "model")
    code, _, err = run(["data", "toy", str(tmp_path / "toy"), "--num-images", "3", "--num-videos", "0",
                        "--num-captioned", "0", "--colour", "orange=245,140,30", "--only-colour"], capsys)
    assert code == 0, err
    code, out, err = run(["finetune", "--model", str(model), "--images", str(tmp_path / "toy" / "images"),
                          "--target", "spatial", "--add-word", "orange", "--out", str(tmp_path / "out"),
                          "--steps", "2", "--rank", "2", "--lr", "1e-2", "--no-progress",
                          "--prompt", "a orange circle", "--sample-steps", "1"], capsys)
    assert code == 0, err
    meta, weights = lora.read_adapter(tmp_path / "out" / "lora")
    assert meta["encoder_words"] == ["orange"]
    spatial = lora.target_modules(TFT2VPipeline.from_pretrained(model).unet, ["spatial"])
    assert set(meta["modules"]) == set(spatial)
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)
    code, out, err = run(["finetune", "--model", str(model), "--out", str(tmp_path / "none")], capsys)
    assert code != 0 and "--clips" in out + err
    code, out, err = run(["finetune", "--model", str(model), "--images", str(tmp_path / "toy" / "images"),
                          "--target", "spaceship", "--out", str(tmp_path / "bad")], capsys)
    assert code != 0 and "spaceship" in out + err


def test_finetune_prior_images_join_the_image_branch(tmp_path, capsys):
    import yaml

    from pipeline_fixtures import toy_model_folder

    from tft2v.data.sources import build_source

    model = toy_model_folder(tmp_path / "model")
    for name, extra in (("new", ["--colour", "orange=245,140,30", "--only-colour"]), ("prior", [])):
        code, _, err = run(["data", "toy", str(tmp_path / name), "--num-images", "3", "--num-videos", "0",
                            "--num-captioned", "0", "--seed", "1", *extra], capsys)
        assert code == 0, err
    new, prior = tmp_path / "new" / "images", tmp_path / "prior" / "images"
    code, out, err = run(["finetune", "--model", str(model), "--images", str(new), "--prior-images", str(prior),
                          "--target", "text_kv", "--add-word", "orange", "--out", str(tmp_path / "out"),
                          "--steps", "2", "--rank", "2", "--no-progress"], capsys)
    assert code == 0, err
    manifest = tmp_path / "out" / "images.jsonl"
    cfg = yaml.safe_load((tmp_path / "out" / "run" / "config.yaml").read_text())
    assert cfg["data"]["images"] == str(manifest)
    items = build_source(manifest, kind="image").items
    captions = sorted(it.caption.split()[1] for it in items)
    assert len(items) == 6 and captions.count("orange") == 3  # the 3 new images and the 3 ordinary ones
    assert {Path(it.media).parent for it in items} == {new.resolve(), prior.resolve()}

    # With clips and no --images, the prior images are the image branch's only data (a motion adapter
    # then also learns on captioned single frames), in their own batch size.
    code, _, err = run(["data", "toy", str(tmp_path / "clips"), "--num-images", "0", "--num-videos", "2",
                        "--num-captioned", "0"], capsys)
    assert code == 0, err
    code, out, err = run(["finetune", "--model", str(model), "--clips", str(tmp_path / "clips" / "videos"),
                          "--prior-images", str(prior), "--image-batch", "3", "--colour-permute",
                          "--out", str(tmp_path / "motion"), "--steps", "2", "--rank", "2", "--no-progress"], capsys)
    assert code == 0, err
    cfg = yaml.safe_load((tmp_path / "motion" / "run" / "config.yaml").read_text())
    assert cfg["data"]["images"] == str(tmp_path / "motion" / "images.jsonl")
    assert cfg["data"]["ratio"] == [1, 1]
    assert cfg["data"]["image_batch_size"] == 3 and cfg["data"]["video_batch_size"] == 2
    assert cfg["model"]["lora"]["targets"] == ["temporal"] and cfg["recipe"]["video_colour_permute"] is True
    items = build_source(tmp_path / "motion" / "images.jsonl", kind="image").items
    assert {Path(it.media).parent for it in items} == {prior.resolve()} and len(items) == 3
    next(prior.glob("*.txt")).unlink()
    code, out, err = run(["finetune", "--model", str(model), "--images", str(new), "--prior-images", str(prior),
                          "--target", "text_kv", "--out", str(tmp_path / "bad2")], capsys)
    assert code != 0 and "no caption" in out + err


def test_lora_demo_end_to_end_on_a_tiny_model(tmp_path):
    from lora_demo import Plan, run_demo
    from pipeline_fixtures import toy_model_folder

    from tft2v.models import lora

    model = toy_model_folder(tmp_path / "model")
    plan = Plan(clips=2, images=2, prior_images=2, rank=2, motion_steps=2, appearance_steps=2, ordinary_seeds=1,
                orange_seeds=1, sample_steps=2, exact_clips=3, motion_lr=1e-2, appearance_lr=1e-2)
    figures = run_demo(model, tmp_path / "demo", seed=0, plan=plan, log=lambda *a: None)
    saved = json.loads((tmp_path / "demo" / "figures.json").read_text())
    assert saved["scale0_bit_exact"] is True and saved["targets"]["scale0_bit_exact"] is True
    assert saved["motion"]["clips"] == 18 and saved["appearance"]["clips"] == 3
    for name in ("base", "motion_adapter", "appearance_adapter"):
        acc = saved["ordinary_accuracy"][name]
        assert 0.0 <= acc["colour"] <= 1.0 and 0.0 <= acc["shape"] <= 1.0
    a = figures["adapters"]
    assert a["motion"]["steps"] == 2 and a["motion"]["targets"] == ["temporal"] and a["motion"]["train_cpu_s"] > 0
    assert a["appearance"]["targets"] == [plan.appearance_target] and a["appearance"]["words"] == ["orange"]
    assert lora.read_adapter(a["appearance"]["adapter"])[0]["encoder_words"] == ["orange"]
    clips = sorted((tmp_path / "demo" / "data_motion" / "videos").glob("*.mp4"))
    assert len(clips) == 2
    truth = [json.loads(line) for line in (tmp_path / "demo" / "data_motion" / "ground_truth.jsonl").open()]
    assert {t["motion"] for t in truth} == {"diagonal"}
    assert {p.read_text().split()[1] for p in (tmp_path / "demo" / "data_appearance" / "images").glob("*.txt")} \
        == {"orange"}
    # The appearance adapter trained on the orange images and the ordinary (prior) ones together.
    assert a["appearance"]["prior_examples"] == 2
    manifest = [json.loads(line) for line in (tmp_path / "demo" / "appearance" / "images.jsonl").open()]
    assert sorted(r["caption"].split()[1] == "orange" for r in manifest) == [False, False, True, True]
    # The motion adapter's image branch: the ordinary images alone.
    assert a["motion"]["prior_examples"] == 2
    manifest = [json.loads(line) for line in (tmp_path / "demo" / "motion" / "images.jsonl").open()]
    assert len(manifest) == 2 and all(r["caption"].split()[1] != "orange" for r in manifest)


def test_demo_command_line_picks_the_base_plan():
    from lora_demo import PLANS, Plan, parse_args

    assert parse_args(["--model", "m"])[1] == PLANS["default"] == Plan()
    _, full = parse_args(["--model", "m", "--base-plan", "full", "--appearance-steps", "7"])
    assert (full.motion_steps, full.appearance_steps, full.appearance_target) == (250, 7, "attn2_kv")
    with pytest.raises(SystemExit):
        parse_args(["--model", "m", "--base-plan", "huge"])


def test_scale_zero_is_bit_exact_and_one_is_not(tmp_path):
    """The demo's bit-exact assertion can fail: a non-zero adapter changes the clips."""
    from lora_demo import Plan, sample
    from pipeline_fixtures import toy_model_folder

    from tft2v.models import lora
    from tft2v.pipeline import TFT2VPipeline

    model = toy_model_folder(tmp_path / "model")
    pipe = TFT2VPipeline.from_pretrained(model)
    lora.add_adapter(pipe.unet, rank=2, targets=("temporal",))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for k, p in pipe.unet.named_parameters():
            if "lora_" in k:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    lora.save_adapter(pipe.unet, tmp_path / "adapter")
    plan = Plan(sample_steps=2)
    prompts = ["a red circle", "a blue square"]

    def load():
        p = TFT2VPipeline.from_pretrained(model)
        p.set_scheduler("dpmpp")
        p.set_progress_bar_config(disable=True)
        return p

    base = sample(load(), prompts, 0, plan)
    adapted = load()
    adapted.load_lora_weights(tmp_path / "adapter", adapter_name="m", scale=0.0)
    assert torch.equal(sample(adapted, prompts, 0, plan), base)
    adapted.set_adapters(["m"], [1.0])
    assert not torch.equal(sample(adapted, prompts, 0, plan), base)
