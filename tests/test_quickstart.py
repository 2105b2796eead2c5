"""The quickstart: budget fitting, claims computed from numbers, and a small end-to-end run."""

import pytest
import torch

from tft2v.data import shapes_spec as spec
from tft2v.data.toy import generate
from tft2v.metrics.toy import evaluate_toy
from tft2v.quickstart import (BASE_CONFIG, EVAL_SEEDS, PLANS, REDUCED_EVAL_SEEDS, VARIANTS, Budget, Plan,
                              appearance_prompts,
                              count_clips, direction_prompts, evaluation_prompts, merge_config, variant_config)
from tft2v.quickstart_report import claims, slow_machine_note, write_report


def _planned_s(b: Budget) -> float:
    clips = count_clips(b.eval_seeds)
    return (b.content_steps * b.image_step_s + b.variant_steps * (b.image_step_s / 4 + 3 * b.mixed_step_s)
            + clips * b.sample_steps * b.sample_s_per_clip_step)


def test_budget_scales_with_minutes_and_keeps_floors():
    small, big = Budget(total_s=60), Budget(total_s=1200)
    for b in (small, big):
        b.image_step_s, b.mixed_step_s, b.sample_s_per_clip_step = 0.2, 0.3, 0.06
        b.fit()
    assert big.content_steps > 10 * small.content_steps // 2 and big.variant_steps > small.variant_steps
    assert small.content_steps >= 20 and small.variant_steps >= 20 and 8 <= small.sample_steps <= 20
    assert big.eval_seeds == EVAL_SEEDS and _planned_s(big) <= 0.95 * 1200


def test_budget_on_a_slow_machine_samples_fewer_clips_and_trains_less():
    # Calibration measured on a box ~4x slower than the reference one (image, mixed, clip-step seconds).
    fast, slow = Budget(total_s=600), Budget(total_s=600)
    fast.image_step_s, fast.mixed_step_s, fast.sample_s_per_clip_step = 0.2, 0.28, 0.084
    slow.image_step_s, slow.mixed_step_s, slow.sample_s_per_clip_step = 0.74, 1.33, 0.255
    fast.fit(), slow.fit()
    assert fast.eval_seeds == EVAL_SEEDS and slow.eval_seeds == REDUCED_EVAL_SEEDS
    assert count_clips(slow.eval_seeds) < count_clips(fast.eval_seeds) and slow.sample_steps == 8
    assert slow.content_steps < fast.content_steps and _planned_s(fast) <= 0.95 * 600 and _planned_s(slow) <= 0.95 * 600


def test_the_default_plan_is_the_same_work_on_any_machine():
    fast, slow = Budget(total_s=0), Budget(total_s=0)
    fast.image_step_s, fast.mixed_step_s, fast.sample_s_per_clip_step = 0.2, 0.28, 0.084
    slow.image_step_s, slow.mixed_step_s, slow.sample_s_per_clip_step = 0.74, 1.33, 0.255
    for b in (fast, slow):
        b.follow(PLANS["default"])
    steps = lambda b: (b.content_steps, b.variant_steps, b.sample_steps, b.eval_seeds)  # noqa: E731
    assert steps(fast) == steps(slow) == (750, 250, 8, EVAL_SEEDS)
    assert slow.predicted_s() > 3 * fast.predicted_s()  # only the ETA depends on the machine
    assert fast.predicted_s() == pytest.approx(_planned_s(fast))


def test_variant_config_continues_from_the_content_stage_with_a_warmup(tmp_path):
    semi = next(v for v in VARIANTS if v.name == "semi_supervised")
    for steps in (20, 250):
        cfg = variant_config(BASE_CONFIG, semi, tmp_path / "content", steps, seed=1, out_dir=tmp_path / "semi")
        assert cfg["model"]["init_path"] == str(tmp_path / "content") and cfg["train"]["max_steps"] == steps
        assert 1 <= cfg["optim"]["warmup_steps"] < steps // 4
        assert cfg["data"]["labelled_ratio"] == 0.5 and cfg["model"]["unet"] == BASE_CONFIG["model"]["unet"]


def test_report_flags_a_run_too_short_to_judge():
    assert slow_machine_note(752, 10) == []
    note = slow_machine_note(77, 10)
    assert "77 content-stage steps" in note[0] and "--minutes 98" in note[0]


def test_prompts_cover_every_combo_and_direction():
    assert len(appearance_prompts()) == len(spec.COLOURS) * len(spec.SHAPES)
    app, directed = evaluation_prompts("tft2v")
    assert len(app) == EVAL_SEEDS[0] * len(appearance_prompts()) and len(directed) == EVAL_SEEDS[1] * len(direction_prompts())
    assert evaluation_prompts("images_only")[1] == []
    parsed = {spec.parse_caption(p) for p in direction_prompts()}
    assert {m for _, _, m in parsed} == set(spec.MOTIONS)
    assert any((c, s) in spec.HELD_OUT for c, s, _ in parsed)


def _clips(kind, n, seed):
    data = generate(kind, n, seed=seed)
    clips = torch.stack([data.sample(i)["pixels"] for i in range(n)])
    truth = [data.truth(i) for i in range(n)]
    return clips, truth


def _fake_results(good: bool):
    """Variant results built from ground-truth clips: 'good' makes every claim true, else false."""
    moving, truth = _clips("videos", 12, 0)
    still = moving[:, :, :1].expand_as(moving).clone()
    app_prompts = [spec.caption(t["colour"], t["shape"]) for t in truth]
    right = [spec.caption(t["colour"], t["shape"], t["motion"]) for t in truth]
    wrong = [spec.caption(t["colour"], t["shape"], spec.MOTIONS[(spec.MOTIONS.index(t["motion"]) + 1) % 4]) for t in truth]
    results = {}
    for v in VARIANTS:
        clips = still if (v.name == "images_only" or not good) else moving
        dir_prompts = right if (v.name == "semi_supervised" and good) else wrong
        directed = None if v.name == "images_only" else evaluate_toy(clips, dir_prompts)
        results[v.name] = {"variant": v, "clips": clips, "prompts": app_prompts,
                           "train": {"loss_last": 0.1, "checkpoint": "/nonexistent/run/checkpoints/x"},
                           "appearance": evaluate_toy(clips, app_prompts), "direction": directed,
                           "all": evaluate_toy(torch.cat([clips, clips]), app_prompts + dir_prompts)}
    return results


def test_claims_follow_the_numbers():
    verdicts = [v for _, _, v in claims(_fake_results(good=True))]
    assert verdicts[0] == "holds" and verdicts[2] == "holds"
    bad = [v for _, _, v in claims(_fake_results(good=False))]
    assert bad[0] == "not shown at this budget" and bad[2] == "not shown at this budget"


def test_held_out_claim_needs_held_out_clips_above_chance():
    images = generate("images", 400, seed=0)
    combo = [(images.truth(i)["colour"], images.truth(i)["shape"]) for i in range(400)]
    held = [i for i in range(400) if combo[i] in spec.HELD_OUT][:12]
    # For each held-out image, an image of the same colour and another shape (a wrong rendering).
    other = [next(j for j in range(400) if combo[j][0] == combo[i][0] and combo[j][1] != combo[i][1]) for i in held]
    seen = list(range(12))
    prompts = [spec.caption(*combo[i]) for i in held + seen]

    def still(idx):
        return torch.stack([images.sample(i)["pixels"].expand(-1, 4, -1, -1) for i in idx])  # 4-frame still clips

    results = _fake_results(good=True)
    results["tft2v"]["all"] = evaluate_toy(still(held + seen), prompts)
    assert claims(results)[3][2] == "holds"
    results["tft2v"]["all"] = evaluate_toy(still(other + seen), prompts)
    assert claims(results)[3][2] == "not shown at this budget"


def test_report_writes_tables_and_pictures(tmp_path):
    budget = Budget(total_s=60, image_step_s=0.2, mixed_step_s=0.3, sample_s_per_clip_step=0.05,
                    content_steps=20, variant_steps=20, sample_steps=8, spent={"train": 1.0})
    report = write_report(tmp_path, _fake_results(True), budget, {"steps": 20, "checkpoint": "/none/run/checkpoints/x"},
                          seed=0, minutes=1, data={"height": 32, "width": 32, "num_frames": 16})
    text = report.read_text()
    assert "| (1) text-free videos give coherent motion |" in text and "**holds**" in text
    for v in VARIANTS:
        assert (tmp_path / "samples" / f"{v.name}.png").is_file() and (tmp_path / "samples" / f"{v.name}.gif").is_file()
        assert v.title in text
    assert (tmp_path / "metrics.json").is_file()


@pytest.mark.slow
def test_quickstart_end_to_end_small(tmp_path):
    from tft2v.quickstart import BASE_CONFIG, run_quickstart

    tiny = merge_config(BASE_CONFIG, {
        "data": {"num_frames": 4, "toy_images": 200, "toy_videos": 100, "toy_captioned_videos": 40,
                 "image_batch_size": 8, "video_batch_size": 2},
        "model": {"unet": {"model_channels": 16, "channel_mult": [1, 2], "attention_scales": [0.5], "head_dim": 8}}})
    said = []
    report = run_quickstart(tmp_path, seed=0, base=tiny, log=said.append, plan=Plan("tiny", 20, 20, 8, (1, 1)))
    text = report.read_text()
    assert "## The paper's claims at toy scale" in text and "4 frames per clip" in text
    assert "fixed plan 'tiny'" in text and said[1].startswith("plan 'tiny': content stage 20 steps, 20 steps")
    assert said[2].startswith("ETA on this machine: ~")
    assert (tmp_path / "losses.png").is_file() and (tmp_path / "timing.json").is_file()
    for v in VARIANTS:
        assert (tmp_path / "runs" / v.name / "model" / "model_index.json").is_file()
