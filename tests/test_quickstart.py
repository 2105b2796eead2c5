"""The quickstart: budget fitting, claims computed from numbers, and a small end-to-end run."""

import json

import pytest
import torch

from tft2v.data import shapes_spec as spec
from tft2v.quickstart import (BASE_CONFIG, EVAL_SEEDS, PLANS, QUICKSTART_THREADS, REDUCED_EVAL_SEEDS, VARIANTS,
                              Budget, Plan, appearance_prompts, count_clips, direction_prompts, evaluation_prompts,
                              merge_config, variant_config)
from tft2v.quickstart_claims import claims
from tft2v.quickstart_report import slow_machine_note, write_report

from tests.quickstart_fixtures import fake_results


def _planned_s(b: Budget) -> float:
    clips = count_clips(b.eval_seeds)
    return (b.content_steps * b.image_step_s + b.variant_steps * (b.image_step_s / 4 + 3 * b.mixed_step_s)
            + b.compositional_steps * b.compositional_step_s + clips * b.sample_steps * b.sample_s_per_clip_step)


def test_budget_scales_with_minutes_and_keeps_floors():
    small, big = Budget(total_s=60), Budget(total_s=1200)
    for b in (small, big):
        b.image_step_s, b.mixed_step_s, b.sample_s_per_clip_step, b.compositional_step_s = 0.2, 0.3, 0.06, 0.5
        b.fit()
    assert big.content_steps > 10 * small.content_steps // 2 and big.variant_steps > small.variant_steps
    assert small.content_steps >= 20 and small.variant_steps >= 20 and 8 <= small.sample_steps <= 20
    assert big.eval_seeds == EVAL_SEEDS and _planned_s(big) <= 0.95 * 1200


def test_budget_on_a_slow_machine_samples_fewer_clips_and_trains_less():
    # Calibration measured on a box ~4x slower than the reference one (image, mixed, clip-step seconds).
    fast, slow = Budget(total_s=600), Budget(total_s=600)
    fast.image_step_s, fast.mixed_step_s, fast.sample_s_per_clip_step, fast.compositional_step_s = 0.2, 0.28, 0.084, 0.5
    slow.image_step_s, slow.mixed_step_s, slow.sample_s_per_clip_step, slow.compositional_step_s = 0.74, 1.33, 0.255, 2.4
    fast.fit(), slow.fit()
    assert fast.eval_seeds == EVAL_SEEDS and slow.eval_seeds == REDUCED_EVAL_SEEDS
    assert count_clips(slow.eval_seeds) < count_clips(fast.eval_seeds) and slow.sample_steps == 8
    assert slow.content_steps < fast.content_steps and _planned_s(fast) <= 0.95 * 600 and _planned_s(slow) <= 0.95 * 600


def test_the_default_plan_is_the_same_work_on_any_machine():
    fast, slow = Budget(total_s=0), Budget(total_s=0)
    fast.image_step_s, fast.mixed_step_s, fast.sample_s_per_clip_step, fast.compositional_step_s = 0.2, 0.28, 0.084, 0.5
    slow.image_step_s, slow.mixed_step_s, slow.sample_s_per_clip_step, slow.compositional_step_s = 0.74, 1.33, 0.255, 2.4
    for b in (fast, slow):
        b.follow(PLANS["default"])
    steps = lambda b: (b.content_steps, b.variant_steps, b.sample_steps, b.eval_seeds)  # noqa: E731
    assert steps(fast) == steps(slow) == (600, 200, 8, EVAL_SEEDS)
    assert fast.compositional_steps == slow.compositional_steps == 150
    assert slow.predicted_s() > 3 * fast.predicted_s()  # only the ETA depends on the machine
    assert fast.predicted_s() == pytest.approx(_planned_s(fast))


def test_the_full_plan_trains_the_variants_four_times_longer_on_the_same_content_stage():
    default, full = PLANS["default"], PLANS["full"]
    assert (full.content_steps, full.sample_steps, full.eval_seeds) == (
        default.content_steps, default.sample_steps, default.eval_seeds)
    assert full.variant_steps == 4 * default.variant_steps
    assert full.compositional_steps == 4 * default.compositional_steps
    b = Budget(total_s=0, image_step_s=0.2, mixed_step_s=0.28, sample_s_per_clip_step=0.084)
    b.follow(full)
    assert (b.content_steps, b.variant_steps) == (600, 800)


def test_variant_config_continues_from_the_content_stage_with_a_warmup(tmp_path):
    semi = next(v for v in VARIANTS if v.name == "semi_supervised")
    for steps in (20, 250):
        cfg = variant_config(BASE_CONFIG, semi, tmp_path / "content", steps, seed=1, out_dir=tmp_path / "semi")
        assert cfg["model"]["init_path"] == str(tmp_path / "content") and cfg["train"]["max_steps"] == steps
        assert 1 <= cfg["optim"]["warmup_steps"] < steps // 4
        assert cfg["data"]["labelled_ratio"] == 0.5 and cfg["model"]["unet"] == BASE_CONFIG["model"]["unet"]


def test_the_report_module_does_not_import_the_quickstart():
    import subprocess
    import sys

    code = "import sys, tft2v.quickstart_report; assert 'tft2v.quickstart' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_report_flags_a_run_too_short_to_judge():
    assert slow_machine_note(600, 10) == []
    note = slow_machine_note(77, 10)
    assert "77 content-stage steps" in note[0] and "--minutes 78" in note[0]


def test_prompts_cover_every_combo_and_direction():
    assert len(appearance_prompts()) == len(spec.COLOURS) * len(spec.SHAPES)
    app, directed = evaluation_prompts("tft2v")
    assert len(app) == EVAL_SEEDS[0] * len(appearance_prompts()) and len(directed) == EVAL_SEEDS[1] * len(direction_prompts())
    assert evaluation_prompts("images_only")[1] == []
    parsed = {spec.parse_caption(p) for p in direction_prompts()}
    assert {m for _, _, m in parsed} == set(spec.MOTIONS)
    assert any((c, s) in spec.HELD_OUT for c, s, _ in parsed)


def test_report_writes_tables_pictures_and_every_clip(tmp_path):
    from tft2v.data.toy_files import read_video
    from tft2v.data.toy import to_pixels
    from tft2v.metrics.toy import analyse_clip

    budget = Budget(total_s=60, image_step_s=0.2, mixed_step_s=0.3, sample_s_per_clip_step=0.05,
                    content_steps=20, variant_steps=20, sample_steps=8, spent={"train": 1.0})
    results = fake_results(True)
    report = write_report(tmp_path, results, budget, {"steps": 20, "checkpoint": "/none/run/checkpoints/x"},
                          seed=0, minutes=1, data={"height": 32, "width": 32, "num_frames": 16})
    text = report.read_text()
    assert "| (1) text-free videos give coherent motion |" in text and "**holds**" in text
    assert "| (5) compositional: motion / sketch conditions steer the video |" in text
    assert "| with the motion condition | 12 | 100 % | 100 % | 100 % | 100 % | 100 % | 0.019 |" in text
    assert "| without a condition | 12 | 100 % | 100 % | 100 % | 0 % | 0 % | 9.039 |" in text
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["compositional"]["conditioned"]["sketch"]["follow_accuracy"] == 1.0
    for v in VARIANTS:
        assert (tmp_path / "samples" / f"{v.name}.png").is_file() and (tmp_path / "samples" / f"{v.name}.gif").is_file()
        assert v.title in text
    assert (tmp_path / "metrics.json").is_file() and "samples/manifest.jsonl" in text
    verdicts = json.loads((tmp_path / "claims.json").read_text())
    assert [c["verdict"] for c in verdicts] == [v for _, _, v in claims(results)] and "holds" in verdicts[0]["verdict"]
    rows = [json.loads(line) for line in (tmp_path / "samples" / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == sum(len(r["prompts"]) for r in results.values())
    for row in rows:
        r = results[row["variant"]]
        assert row["prompt"] == r["prompts"][row["index"]] and row["seed"] == r["seeds"][row["index"]]
        assert row["path"] == (f"samples/{row['variant']}/{row['index']:03d}_{row['prompt'].replace(' ', '-')}"
                               f"_s{row['seed']}.mp4") and (tmp_path / row["path"]).is_file()
        assert row["kind"] == r["kinds"][row["index"]]
        assert row["kind"] == ("appearance" if row["index"] < len(r["appearance"]["clips"]) else
                               "direction" if row["variant"] != "compositional" else row["kind"])
        if row["kind"] in ("motion", "sketch"):  # conditioned: its condition clip is a file, with its truth
            source = row["condition_clip"]
            assert (tmp_path / source["path"]).is_file() and source["path"].endswith(f"_{source['motion']}.mp4")
            assert "follows" in row["verdicts"] and len(source["track"]) == 16
        else:
            assert "condition_clip" not in row
        assert row["verdicts"]["colour"] == r["all"]["clips"][row["index"]]["colour"]
        assert row["sampling"]["guidance"] == 3.0 and row["model"] == "/nonexistent/model"
    # Anyone can re-score a clip from its file: the detector says the same on the decoded video.
    for row in rows[::23]:
        again = analyse_clip(to_pixels(read_video(tmp_path / row["path"])))
        for key in ("present", "colour", "shape", "direction", "moving", "coherent"):
            assert again[key] == row["verdicts"][key], (row["path"], key)


@pytest.mark.slow
def test_quickstart_end_to_end_small(tmp_path):
    from tft2v.quickstart import BASE_CONFIG, run_quickstart

    tiny = merge_config(BASE_CONFIG, {
        "data": {"num_frames": 4, "toy_images": 200, "toy_videos": 100, "toy_captioned_videos": 40,
                 "image_batch_size": 8, "video_batch_size": 2},
        "model": {"unet": {"model_channels": 16, "channel_mult": [1, 2], "attention_scales": [0.5], "head_dim": 8}}})
    said = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the run sets its own thread count and gives this one back
    try:
        report = run_quickstart(tmp_path, seed=0, base=tiny, log=said.append, plan=Plan("tiny", 20, 20, 8, (1, 1), 10))
        assert torch.get_num_threads() == 1 and f"in all, {QUICKSTART_THREADS} threads" in said[1]
    finally:
        torch.set_num_threads(threads)
    text = report.read_text()
    assert "## The paper's claims at toy scale" in text and "4 frames per clip" in text
    assert "fixed plan 'tiny'" in text and said[1].startswith("plan 'tiny': content stage 20 steps, 20 steps")
    assert said[2].startswith("ETA on this machine: ~")
    assert (tmp_path / "losses.png").is_file() and (tmp_path / "timing.json").is_file()
    for v in VARIANTS:
        assert (tmp_path / "runs" / v.name / "model" / "model_index.json").is_file()
    # Every sampled clip is its own file, listed with prompt, seed and verdicts.
    rows = [json.loads(line) for line in (tmp_path / "samples" / "manifest.jsonl").read_text().splitlines()]
    assert {r["variant"] for r in rows} == {v.name for v in VARIANTS}
    assert all((tmp_path / r["path"]).is_file() and r["path"].endswith(f"_s{r['seed']}.mp4") for r in rows)
    assert all(r["model"].endswith(f"{r['variant']}/model") and "present" in r["verdicts"] for r in rows)
    conditioned = [r for r in rows if r["kind"] in ("motion", "sketch")]
    assert len(conditioned) == 2 * len(appearance_prompts()) and all("follows" in r["verdicts"] for r in conditioned)
    assert "## Compositional synthesis" in text and "(+ 10 compositional)" in said[1]
    from tft2v.pipeline import TFT2VPipeline  # the compositional model folder takes a motion condition
    pipe = TFT2VPipeline.from_pretrained(tmp_path / "runs" / "compositional" / "model")
    assert set(pipe.unet.config.conditions) == {"motion", "sketch"}
    per_variant = {v.name: sum(r["variant"] == v.name for r in rows) for v in VARIANTS}
    assert per_variant["images_only"] % len(appearance_prompts()) == 0 and per_variant["tft2v"] > per_variant["images_only"]
