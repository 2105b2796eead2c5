"""``tft2v train CONFIG.yaml [--set key=value ...] [--resume DIR|auto] [--out DIR]``.

Runs single-process or under ``accelerate launch`` / ``torchrun`` (DDP, FSDP, DeepSpeed): every rank
runs this same command. Heavy imports happen inside the command so ``--help`` stays fast.
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
        None, "--resume", help="A run folder, a checkpoint folder, or 'auto' (newest checkpoint of --out)."),
    out: Optional[str] = typer.Option(None, "--out", help="Run folder (overrides out_dir in the config)."),
) -> None:
    """Train TF-T2V: content branch on images, motion branch on text-free videos, one optimizer step."""
    from tft2v.config import load_config
    from tft2v.train import train as run_training

    sets = list(overrides or [])
    if out is not None:
        sets.append(f"out_dir={out}")
    run_training(load_config(config, sets), resume=resume)
