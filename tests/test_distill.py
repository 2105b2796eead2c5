"""``tft2v distill`` end to end on a tiny teacher, from PNG/mp4 files on disk read by 2 worker processes: full and
LoRA students, exact resume (losses, weights and the target network), the few-step model folder it exports and
4-step generation from it, the TF-T2V mix (text-free clips with image tokens), the CLI and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from cli_run import run
from tft2v.config import load_config
from tft2v.data.toy import ToyWorld
from tft2v.data.toy_files import write_toy_dataset
from tft2v.errors import ConfigError
from tft2v.pipeline import TFT2VPipeline
from tft2v.train import train
from tft2v.train.distill_trainer import TARGET_NAME, DistillTrainer, distill
from train_fixtures import tiny_overrides

UNET = ("{model_channels: 8, channel_mult: [1, 2], num_res_blocks: 1, attention_scales: [0.5], head_dim: 8,"
        " init_temporal_heads: 1, norm_num_groups: 4, condition_channels: 0, image_embed_dim: 32, dropout: 0.0,"
        " temporal_conv_dropout: 0.0, condition_encoder_dropout: 0.0}")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A tiny TF-T2V model folder with image tokens (trained 2 steps on the in-memory shapes world)."""
    run_dir = tmp_path_factory.mktemp("teacher") / "run"
    cfg = load_config(None, tiny_overrides(run_dir, **{"model.unet": UNET, "recipe.image_tokens_on_videos": True,
                                                       "train.max_steps": 2, "train.export": True}))
    train(cfg)
    return run_dir / "model"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy_files")
    write_toy_dataset(root, num_images=8, num_videos=6, num_captioned=4, world=ToyWorld(size=16, frames=4, size_range=(3, 6)))
    return root


def distill_sets(teacher: Path, files: Path, out: Path, **extra) -> list[str]:
    sets = {
        "out_dir": str(out), "distill.teacher": str(teacher), "model.init": "pretrained",
        "model.init_path": str(teacher),
        "data.kind": "sources", "data.images": str(files / "images"), "data.videos": str(files / "videos"),
        "data.captioned_videos": str(files / "captioned_videos"), "data.labelled_ratio": 0.5,
        "data.height": 16, "data.width": 16, "data.num_frames": 4, "data.fps": 8, "data.num_workers": 2,
        "data.image_batch_size": 2, "data.video_batch_size": 2,
        "recipe.image_tokens_on_videos": True, "recipe.text_dropout": 0.0, "recipe.image_token_dropout": 0.0,
        "distill.ddim_steps": 10, "distill.validation_steps": "[1, 2]",
        "optim.lr": 1e-3, "optim.warmup_steps": 1, "train.max_steps": 4, "train.log_every": 1,
        "train.checkpoint_every": 1, "train.progress": False, "train.trackers": "[]", "train.export": True,
        "train.validation_prompts": "[a red circle]", "train.validation_frames": 4,
    }
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(path)


def count_unet_calls(pipe) -> list:
    calls = []
    forward = pipe.unet.forward

    def counted(*args, **kwargs):
        calls.append(kwargs.get("guidance"))
        return forward(*args, **kwargs)

    pipe.unet.forward = counted
    return calls


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_distill_end_to_end_with_exact_resume(tmp_path, teacher, files, mode):
    extra = ({"distill.guidance_w_range": "[2.0, 6.0]", "optim.ema_decay": 0.9} if mode == "full" else
             {"model.lora": "{rank: 4, targets: [temporal, spatial]}", "distill.loss": "l2"})
    whole = distill(load_config(None, distill_sets(teacher, files, tmp_path / "whole", **extra)))
    assert whole["steps"] == 4 and all(v > 0 for v in losses(tmp_path / "whole").values())
    DistillTrainer(load_config(None, distill_sets(teacher, files, tmp_path / "part", **extra))).run(stop_at=2)
    distill(load_config(None, distill_sets(teacher, files, tmp_path / "part", **extra)), resume="auto")
    assert losses(tmp_path / "whole") == losses(tmp_path / "part")
    a, b = tmp_path / "whole/checkpoints/step-00000004", tmp_path / "part/checkpoints/step-00000004"
    weights = "unet/diffusion_pytorch_model.safetensors" if mode == "full" else "lora/pytorch_lora_weights.safetensors"
    for name in (weights, TARGET_NAME):
        x, y = tensors(a / name), tensors(b / name)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
    # the target follows the student: it moved between steps 2 and 4
    earlier, target = tensors(a.parent / "step-00000002" / TARGET_NAME), tensors(a / TARGET_NAME)
    assert any(not torch.equal(v, earlier[k]) for k, v in target.items())

    # validation videos at 1 and 2 steps, and a few-step model folder
    videos = sorted(p.name for p in (tmp_path / "whole/validation/step-00000004").iterdir())
    assert videos == ["00_a_red_circle_1step.mp4", "00_a_red_circle_2step.mp4"]
    index = json.loads((tmp_path / "whole/model/model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "LCMScheduler"]
    assert index["tft2v"]["num_inference_steps"] == 4 and index["tft2v"]["guidance_scale"] == 1.0
    pipe = TFT2VPipeline.from_pretrained(tmp_path / "whole/model")
    assert pipe.few_step and pipe.scheduler.config.original_inference_steps == 10
    assert bool(pipe.unet.config.get("guidance_embed")) == (mode == "full")
    calls = count_unet_calls(pipe)
    video = pipe("a red circle", num_frames=4, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert video.shape == (1, 3, 4, 16, 16) and torch.isfinite(video).all()
    assert len(calls) == 4  # 4 steps, one UNet call each: no CFG pass
    if mode == "full":
        assert index["tft2v"]["guidance_w"] == 4.0 and all(float(w[0]) == 4.0 for w in calls)
        other = pipe("a red circle", num_frames=4, generator=torch.Generator().manual_seed(0), output_type="pt",
                     guidance_w=6.0)
        assert not torch.equal(video, other)  # the learnt embedding reads w
    else:
        assert index["lora"]["adapter"] == "lora" and all(w is None for w in calls)


def test_text_free_clips_go_in_with_image_tokens_and_image_guidance(tmp_path, teacher, files, monkeypatch):
    """A text-free clip: empty caption and image tokens for student and teacher; the teacher's unconditional half
    has zero image embeddings (image-token guidance). Captioned samples keep their captions."""
    cfg = load_config(None, distill_sets(teacher, files, tmp_path / "run", **{"data.ratio": "[0, 1]",
                                                                                "data.labelled_ratio": 0.0}))
    trainer = DistillTrainer(cfg)
    seen = []
    forward = trainer.recipe.teacher.forward

    def spy(x, t, encoder_hidden_states=None, image_embeds=None, conditions=None):
        seen.append((encoder_hidden_states, image_embeds))
        return forward(x, t, encoder_hidden_states=encoder_hidden_states, image_embeds=image_embeds,
                       conditions=conditions)

    monkeypatch.setattr(trainer.recipe.teacher, "forward", spy)
    trainer.run(stop_at=1)
    text, image = seen[0]
    b = image.shape[0] // 2
    empty = trainer.encoder.encode_text([""]).float()
    torch.testing.assert_close(text, empty.expand_as(text))  # uncond = negative prompt "" = the clips' empty caption
    assert image[:b].abs().max() == 0 and image[b:].abs().amax(dim=1).min() > 0  # every clip has its image


def test_collapse_warning_reaches_the_log(tmp_path, teacher, files, capsys, monkeypatch):
    import tft2v.train.validation as validation

    monkeypatch.setattr(validation, "sample_few_step_clips",
                        lambda unet, enc, ae, cfg, k: torch.full((1, 3, 4, 16, 16), -1.0))
    cfg = load_config(None, distill_sets(teacher, files, tmp_path / "run", **{"train.max_steps": 2,
                                                                                "train.validate_every": 1}))
    DistillTrainer(cfg).run()
    err = capsys.readouterr().err
    assert "validation at step 1 looks collapsed (since step 1)" in err
    assert "validation at step 2 looks collapsed (since step 1)" in err and "frames 1-3 black" in err
    state = json.loads((tmp_path / "run/checkpoints/step-00000002/trainer_state.json").read_text())
    assert state["collapse_since"] == 1


def test_cli_distill_and_errors(tmp_path, teacher, files, capsys):
    config = tmp_path / "distill.yaml"
    config.write_text("distill: {ddim_steps: 10}\n")
    sets = [s for s in distill_sets(teacher, files, tmp_path / "run", **{"train.max_steps": 1})
            if not s.startswith(("distill.teacher=", "model.init", "out_dir="))]
    argv = ["distill", str(config), "--teacher", str(teacher), "--out", str(tmp_path / "run")]
    code, _, err = run(argv + sum((["--set", s] for s in sets), []), capsys)
    assert code == 0, err
    assert (tmp_path / "run/model/model_index.json").is_file()
    code, _, err = run(["distill", str(config), "--teacher", str(tmp_path / "run/model"), "--out",
                        str(tmp_path / "again")], capsys)
    assert code == 2 and "already a distilled (few-step) model" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(["distill", str(config), "--teacher", str(tmp_path / "nowhere"), "--out",
                        str(tmp_path / "x")], capsys)
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(["train", str(config), "--set", f"distill.teacher={teacher}"], capsys)
    assert code == 2 and "run tft2v distill" in err
    code, _, err = run(argv + ["--set", "model.init=scratch"], capsys)
    assert code == 2 and "the student starts as the teacher" in err
    with pytest.raises(ConfigError, match="LoRA adapter does not hold"):
        load_config(None, distill_sets(teacher, files, tmp_path / "y", **{
            "model.lora": "{rank: 4}", "distill.guidance_w_range": "[5, 15]"}))
