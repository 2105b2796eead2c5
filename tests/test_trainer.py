"""The training loop: logs, checkpoints, exact resume (in process and after SIGKILL), non-finite steps skipped
and the stop after too many in a row, CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tft2v.errors import TFT2VError
from tft2v.train import Trainer, train
from tft2v.train.checkpoint import list_checkpoints
from train_fixtures import kill_after_checkpoint, tiny_config, tiny_overrides

REPO = Path(__file__).resolve().parents[1]


def losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


def test_run_logs_per_branch_and_saves_config_and_checkpoint(tmp_path):
    summary = train(tiny_config(tmp_path / "run", **{"train.max_steps": 2}))
    run = tmp_path / "run"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert {"image/loss", "video/loss", "video/coherence", "lr", "grad_norm"} <= set(records[0])
    assert summary["steps"] == 2 and summary["loss_first"] is not None
    ckpts = list_checkpoints(run / "checkpoints")
    assert [c.name for c in ckpts] == ["step-00000002"]
    assert (run / "config.yaml").read_text() == (ckpts[0] / "config.yaml").read_text()
    assert "coherence_weight" in (run / "config.yaml").read_text()


def test_resume_in_process_is_exact(tmp_path):
    # Validating (with the EMA weights) after every step must leave training untouched: the full run
    # trains on from post-validation weights, the resumed one from the pre-validation checkpoint.
    extra = {"train.max_steps": 4, "train.checkpoint_every": 1, "optim.ema_decay": 0.9,
             "data.labelled_ratio": 0.5, "recipe.text_dropout": 0.5, "train.validate_every": 1,
             "train.validation_prompts": "[a red circle]", "train.validation_steps": 2, "train.validation_frames": 2}
    train(tiny_config(tmp_path / "full", **extra))
    Trainer(tiny_config(tmp_path / "part", **extra)).run(stop_at=2)
    train(tiny_config(tmp_path / "part", **extra), resume="auto")
    assert losses(tmp_path / "full") == losses(tmp_path / "part")
    a = torch.load(tmp_path / "full/checkpoints/step-00000004/ema.pt", weights_only=True)
    b = torch.load(tmp_path / "part/checkpoints/step-00000004/ema.pt", weights_only=True)
    assert all(torch.equal(x, y) for x, y in zip(a["shadow_params"], b["shadow_params"]))


def test_keep_last(tmp_path):
    train(tiny_config(tmp_path / "r", **{"train.max_steps": 4, "train.checkpoint_every": 1, "train.keep_last": 2}))
    assert [c.name for c in list_checkpoints(tmp_path / "r/checkpoints")] == ["step-00000003", "step-00000004"]


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.unet.state_dict().items()}


@pytest.mark.parametrize("where, grad_accum, max_grad_norm", [
    ("loss", 1, 1.0),  # caught by the loss (and the clipping norm)
    ("loss", 2, 0.0),  # NaN in the first of two micro-batches, no clipping: the loss, summed over both
    ("gradient", 1, 0.0),  # finite loss, inf gradients, no clipping norm: each gradient is checked
    ("gradient", 2, 1.0),  # finite loss, inf gradients: the clipping norm
])
def test_nonfinite_step_is_skipped_with_the_weights_untouched(tmp_path, where, grad_accum, max_grad_norm):
    trainer = Trainer(tiny_config(tmp_path / "run", **{"train.max_steps": 3, "train.grad_accum": grad_accum,
                                                       "optim.max_grad_norm": max_grad_norm, "optim.ema_decay": 0.9}))
    real = trainer.recipe.branch_loss
    poisoned_calls = []

    def poisoned(*args, **kw):
        loss, parts = real(*args, **kw)
        if trainer.step == 1 and not poisoned_calls:  # step 2, its first micro-batch's first branch
            poisoned_calls.append(1)
            if where == "loss":
                return loss * float("nan"), parts
            return loss + _inf_gradient(trainer), parts
        return loss, parts

    trainer.recipe.branch_loss = poisoned
    batches = iter(trainer.loader)

    def step() -> dict:
        return trainer.train_step([next(batches) for _ in range(grad_accum)])

    step()
    weights, shadows = _weights(trainer), [s.clone() for s in trainer.ema.shadow_params]
    lr_steps = trainer.lr_scheduler.last_epoch
    logs = step()
    assert logs["skipped_steps"] == 1 and trainer.step == 2 and trainer.nonfinite_in_a_row == 1
    assert (logs["loss"] != logs["loss"]) == (where == "loss")  # NaN loss logged as it was
    after = _weights(trainer)
    assert all(torch.equal(after[k], v) for k, v in weights.items())  # untouched
    assert all(torch.equal(a, b) for a, b in zip(trainer.ema.shadow_params, shadows))  # no EMA update
    assert trainer.lr_scheduler.last_epoch == lr_steps  # the schedule follows the updates made
    assert all(p.grad is None for p in trainer.params)  # the bad gradients are gone
    logs = step()
    assert logs["skipped_steps"] == 1 and trainer.nonfinite_in_a_row == 0 and logs["loss"] == logs["loss"]
    after = _weights(trainer)
    assert any(not torch.equal(after[k], v) for k, v in weights.items())  # training goes on


def _inf_gradient(trainer):
    """0 in value, inf in the gradient of the first trainable weight during step 2: a finite loss with a bad
    backward."""
    weight = trainer.params[0]
    weight.register_hook(lambda g: torch.full_like(g, float("inf")) if trainer.step == 1 else None)
    return 0 * weight.sum()


def test_nonfinite_steps_in_a_row_stop_with_the_last_good_weights(tmp_path):
    import safetensors.torch

    cfg = tiny_config(tmp_path / "nan", **{"train.max_steps": 6, "train.max_nonfinite_skips": 2,
                                           "train.log_every": 1})
    trainer = Trainer(cfg)
    real = trainer.recipe.branch_loss
    good = {}

    def poisoned(*args, **kw):
        loss, parts = real(*args, **kw)
        if trainer.step >= 2:  # steps 3, 4: NaN
            good.setdefault("weights", _weights(trainer))
            return loss * float("nan"), parts
        return loss, parts

    trainer.recipe.branch_loss = poisoned
    with pytest.raises(TFT2VError, match=r"not finite on 2 steps in a row \(steps 3-4\); stopped") as e:
        trainer.run()
    assert len(str(e.value).splitlines()) == 1
    debug = tmp_path / "nan/checkpoints/debug-step-00000004"
    saved = safetensors.torch.load_file(debug / "unet" / "diffusion_pytorch_model.safetensors")
    assert saved.keys() == good["weights"].keys()
    assert all(torch.equal(saved[k], v) for k, v in good["weights"].items())  # the weights after step 2
    state = json.loads((debug / "trainer_state.json").read_text())
    assert (state["step"], state["skipped_steps"], state["nonfinite_in_a_row"]) == (4, 2, 2)
    records = [json.loads(x) for x in (tmp_path / "nan/metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records if "loss" in r] == [0, 0, 1, 2]
    resumed = Trainer(cfg, resume=str(debug))  # a debug checkpoint resumes on explicit request, counts kept
    assert (resumed.step, resumed.skipped_steps, resumed.nonfinite_in_a_row) == (4, 2, 2)
    assert resumed.run()["steps"] == 6


def _cli(args, **kw):
    return subprocess.run([sys.executable, "-m", "tft2v.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


def test_cli_errors_are_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {kind: sources, videos: /no/such/folder}\n")
    r = _cli(["train", str(cfg)])
    assert r.returncode == 2 and r.stderr.strip() == "error: data.videos: path not found: /no/such/folder"
    r = _cli(["train", str(cfg), "--set", "recipe.lamda=0.1"])
    assert r.returncode == 2 and "recipe.lamda" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_bit_exact(tmp_path):
    """Kill -9 a training process mid-run; the resumed loss sequence equals an uninterrupted run's."""
    steps = 8
    extra = {"train.max_steps": steps, "train.checkpoint_every": 1, "data.labelled_ratio": 0.5,
             "recipe.text_dropout": 0.5, "optim.ema_decay": 0.9}
    args = ["train", "-", *sum((["--set", s] for s in tiny_overrides(tmp_path / "full", **extra)), [])]
    full = _cli([a if a != "-" else str(REPO / "configs/toy.yaml") for a in args], timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]

    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "tft2v.cli", "train", str(REPO / "configs/toy.yaml"),
           *sum((["--set", s] for s in tiny_overrides(run, **extra)), [])]
    left = kill_after_checkpoint(cmd, run, "step-00000003", REPO, {**os.environ, "OMP_NUM_THREADS": "1"})
    killed_at = left[-1].name
    assert killed_at < f"step-{steps:08d}", "the run finished before it was killed"
    resumed = _cli(["train", str(REPO / "configs/toy.yaml"),
                    *sum((["--set", s] for s in tiny_overrides(run, **extra)), []), "--resume", "auto"], timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr
    assert losses(run) == losses(tmp_path / "full")
    assert sorted(losses(run)) == list(range(1, steps + 1))


def test_example_configs_load_and_real_paths_fail_clearly(tmp_path):
    from tft2v.config import load_config

    toy = load_config(REPO / "configs/toy.yaml")
    assert toy.data.kind == "toy" and toy.autoencoder.kind == "none" and toy.recipe.coherence_weight == 0.1
    real = load_config(REPO / "configs/tft2v_256x448.yaml", [f"out_dir={tmp_path / 'real'}"])
    assert (real.data.height, real.data.width, real.data.num_frames) == (256, 448, 16)
    with pytest.raises(TFT2VError, match="path not found: /path/to/laion_image_text"):
        Trainer(real)
    comp = load_config(REPO / "configs/compositional.yaml")
    assert set(comp.recipe.conditions) == {"sketch", "depth", "motion", "masked", "local_image"}


def test_compositional_stage_trains_only_condition_encoders(tmp_path):
    extra = {"recipe.conditions": "[sketch, masked]", "data.height": 32, "data.width": 32,
             "data.toy_object_size": "[6, 12]", "data.num_frames": 2, "train.max_steps": 1,
             "model.unet.condition_channels": 4, "model.unet.condition_pixel_size": "[256, 256]",
             "recipe.trainable": "condition_encoders", "optim.warmup_steps": 0}
    trainer = Trainer(tiny_config(tmp_path / "comp", **extra))
    with torch.no_grad():  # a scratch UNet's zero output conv would block every gradient; act pretrained
        trainer.unet.out[-1].weight.normal_(0, 0.05)
    before = {k: v.clone() for k, v in trainer.unet.state_dict().items()}
    trainer.run()
    moved = {k for k, v in trainer.unet.state_dict().items() if not torch.equal(v, before[k])}
    assert moved and all(k.startswith("condition_encoders.") for k in moved)


def test_validation_videos_and_exported_model_folder(tmp_path):
    from tft2v.pipeline import TFT2VPipeline
    from tft2v.train.validation import export_model_folder

    summary = train(tiny_config(tmp_path / "run", **{"train.max_steps": 1, "train.export": True,
                                                     "train.validation_prompts": "[a red circle]",
                                                     "train.validation_steps": 2, "train.validation_frames": 2}))
    assert [Path(p).suffix for p in summary["validation_videos"]] == [".mp4"]
    assert Path(summary["validation_videos"][0]).stat().st_size > 0
    pipe = TFT2VPipeline.from_pretrained(summary["model"])
    trained = TFT2VPipeline.from_pretrained(export_model_folder(tmp_path / "run", tmp_path / "again"))
    for a, b in zip(pipe.unet.parameters(), trained.unet.parameters()):
        assert torch.equal(a, b)
    frames = pipe("a red circle", num_frames=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type="pt")
    assert frames.shape[-2:] == (16, 16)


def test_optimizer_uses_the_fused_adamw_kernel_unless_switched_off(tmp_path):
    fused = Trainer(tiny_config(tmp_path / "fused", **{"train.max_steps": 2}))
    plain = Trainer(tiny_config(tmp_path / "plain", **{"train.max_steps": 2, "optim.fused": False}))
    assert fused.optimizer.optimizer.param_groups[0]["fused"] is True
    assert not plain.optimizer.optimizer.param_groups[0]["fused"]
    for trainer in (fused, plain):
        trainer.run()
    # The same update up to float rounding: one kernel for all tensors instead of a loop over them.
    for a, b in zip(fused.unet.parameters(), plain.unet.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
