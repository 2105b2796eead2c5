"""Driver for the multi-process tests, run with ``python`` (one process) or ``torchrun`` (DDP, or FSDP
when ACCELERATE_USE_FSDP/FSDP_* are set as ``accelerate launch`` sets them).

Every step feeds ``Trainer.train_step`` hand-built micro-batches cut from ONE global batch of
``--global-batch`` samples drawn from a per-step seed, so any world size sees the same data: the
micro-batch of rank r in micro-step m holds the global samples (m·world + r)·B … +B, the index the
per-sample generators use (B = global / (world · grad_accum)). Losses per step, the checkpoints and
(optionally) validation clips sampled with every rank taking part are written to ``out``.

``--nan-at K``: the first image sample of step K (rank 0's) has NaN pixels.

usage: dist_driver.py OUT --steps N [--save-at 2,4] [--resume CKPT] [--validate] [--export] [--nan-at K]
                      [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_fixtures import tiny_config  # noqa: E402

CAPTIONS = ["a red circle", "a blue square", "a green triangle", "a yellow circle",
            "a cyan square", "a magenta triangle", "a white circle", "a red square"]


def global_batch_of(step: int, n: int, frames: int, size: int) -> dict:
    """The whole step's samples: {"image": ..., "video": ...}, each branch n samples."""
    g = torch.Generator().manual_seed(1000 + step)
    out = {}
    for branch, f in (("image", 1), ("video", frames)):
        pixels = torch.rand((n, 3, f, size, size), generator=g) * 2 - 1  # (n, 3, F, H, W) in [-1, 1]
        pick = torch.randint(len(CAPTIONS), (n,), generator=g).tolist()
        has_text = torch.rand(n, generator=g) < (1.0 if branch == "image" else 0.5)
        out[branch] = {"pixels": pixels, "cond_frame": pixels[:, :, f // 2].clone(), "has_text": has_text,
                       "caption": [CAPTIONS[i] if t else "" for i, t in zip(pick, has_text.tolist())],
                       "key": [f"{branch}/{step:04d}-{i:02d}" for i in range(n)]}
    return out


def take(batch: dict, start: int, count: int) -> dict:
    return {branch: {k: v[start:start + count] for k, v in part.items()} for branch, part in batch.items()}


def driver_config(out, steps: int, sets: dict | None = None):
    """The tiny config the driver trains: ``steps`` steps, EMA, two validation prompts; ``sets`` on top."""
    overrides = {"train.max_steps": steps, "optim.ema_decay": 0.9, "optim.warmup_steps": 1,
                 "train.validation_prompts": "['a red circle', 'a blue square']", "train.validation_frames": 2,
                 "train.validation_steps": 3, **(sets or {})}
    return tiny_config(out, **overrides)


def run(out, steps: int, global_batch: int = 4, save_at=(), resume=None, validate: bool = False,
        export: bool = False, sets: dict | None = None, nan_at: int = 0) -> dict:
    """Train ``steps`` steps of the tiny config in ``out`` (this process's share of each global batch);
    returns (and writes to ``out/driver_rank{r}.json``) the per-step losses and what else was asked for."""
    from tft2v.train import Trainer

    cfg = driver_config(out, steps, sets)
    trainer = Trainer(cfg, resume=None if resume is None else str(resume))
    acc = trainer.accelerator
    world, rank, accum = acc.num_processes, acc.process_index, cfg.train.grad_accum
    b = global_batch // (world * accum)
    assert b * world * accum == global_batch, "global batch must split evenly"
    losses = {}
    while trainer.step < steps:
        whole = global_batch_of(trainer.step, global_batch, cfg.data.num_frames, cfg.data.height)
        if trainer.step + 1 == nan_at:
            whole["image"]["pixels"][0] = float("nan")
        micro = [take(whole, (m * world + rank) * b, b) for m in range(accum)]
        logs = trainer.train_step(micro)
        losses[str(trainer.step)] = logs["loss"]  # JSON keys
        if trainer.step in save_at:
            trainer.save()
    result = {"losses": losses, "world": world, "distributed_type": acc.distributed_type.value,
              "model_class": type(trainer.model).__name__, "skipped_steps": trainer.skipped_steps}
    if validate:
        from tft2v.train.validation import sample_validation_clips, sampling_unet

        with sampling_unet(acc, trainer.model, trainer.unet, trainer.ema, trainer.params) as unet:
            if unet is not None:
                torch.save(sample_validation_clips(unet, trainer.encoder, trainer.autoencoder, cfg),
                           Path(out) / "validation_clips.pt")
        result["validation"] = [str(p) for p in trainer.validate()]  # the trainer's own, files on disk
    if export:
        from tft2v.train.checkpoint import list_checkpoints

        model_dir = trainer.export(list_checkpoints(Path(out) / "checkpoints")[-1])
        result["model"] = None if model_dir is None else str(model_dir)
    (Path(out) / f"driver_rank{rank}.json").write_text(json.dumps(result))
    trainer.log.close()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--global-batch", type=int, default=4)
    ap.add_argument("--save-at", default="")
    ap.add_argument("--resume", default=None)
    ap.add_argument("--validate", action="store_true")
    ap.add_argument("--export", action="store_true")
    ap.add_argument("--nan-at", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[])
    a = ap.parse_args()
    run(a.out, a.steps, a.global_batch, {int(s) for s in a.save_at.split(",") if s}, a.resume, a.validate, a.export,
        dict(s.split("=", 1) for s in a.set), a.nan_at)


if __name__ == "__main__":
    main()
