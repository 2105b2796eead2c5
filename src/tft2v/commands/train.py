"""``tft2v train CONFIG.yaml [--set key=value ...] [--resume DIR|auto|auto-or-new | --overwrite] [--out DIR]``.

Runs single-process or under ``accelerate launch`` / ``torchrun`` (DDP, FSDP; DeepSpeed is untested, see the
README): every rank runs this same command. Heavy imports happen inside the command so ``--help`` stays fast.

The run folder (``--out``) holds one run: a new or empty folder starts one, ``--resume`` continues it,
``--overwrite`` replaces it; training into a folder that holds a run without either is an error
(see tft2v.train.run_folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def train(
    config: Path = typer.Argument(..., help="YAML training config (see configs/)."),
    overrides: Optional[list[str]] = typer.Option(
        None, "--set", help="Dotted override key=value, repeatable (e.g. --set optim.lr=1e-4)."),
    resume: Optional[str] = typer.Option(
        None, "--resume",
        help="Continue a run: 'auto' (newest checkpoint of --out; none is an error), 'auto-or-new' (the same, "
             "or a new run when there is none: for restartable job scripts), a run folder or a checkpoint "
             "folder (also of another run: branches off into --out)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Delete the run already in --out (its checkpoints, logs, tensorboard, "
                                   "validation, model; not other files) and start over."),
    out: Optional[str] = typer.Option(None, "--out", help="Run folder (overrides out_dir in the config)."),
) -> None:
    """Train TF-T2V: content branch on images, motion branch on text-free videos, one optimizer step."""
    from tft2v.config import load_config
    from tft2v.train import train as run_training

    sets = list(overrides or [])
    if out is not None:
        sets.append(f"out_dir={out}")
    cfg = load_config(config, sets)
    if cfg.distill.teacher:
        from tft2v.errors import ConfigError

        raise ConfigError(f"this config distils {cfg.distill.teacher} (distill.teacher is set): run tft2v distill")
    run_training(cfg, resume=resume, overwrite=overwrite)
