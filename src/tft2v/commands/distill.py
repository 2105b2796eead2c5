"""``tft2v distill CONFIG.yaml --teacher MODEL_DIR [--set key=value ...] [--resume …|--overwrite] [--out DIR]``.

Consistency distillation (LCM / VGen's VideoLCM) of a model folder into a few-step one, with the conventions
of ``tft2v train`` (config, ``--set``, run folder, resume, export): the run's ``model/`` samples in
``distill.sample_steps`` steps (default 4) with one UNet call each. The student starts as the teacher
(``model.init: pretrained`` on it; with ``model.lora`` only adapters learn) and uses the teacher's own encoder
and autoencoder. Heavy imports happen inside the command so ``--help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

EXAMPLES = """Examples:
  tft2v distill configs/distill_toy.yaml --teacher runs/toy/model --out runs/toy-lcm
  tft2v distill configs/distill_toy.yaml --teacher runs/toy/model --set 'model.lora={rank: 16, targets: [temporal, spatial]}'
  tft2v generate --model runs/toy-lcm/model "a red circle" --out circle.mp4      # 4 steps, no CFG pass
"""


def distill(
    config: Path = typer.Argument(..., help="YAML config (see configs/distill_toy.yaml): data, distill.*, optim, train."),
    teacher: Path = typer.Option(..., "--teacher", help="The teacher's model folder (tft2v train / convert output)."),
    overrides: Optional[list[str]] = typer.Option(
        None, "--set", help="Dotted override key=value, repeatable (e.g. --set distill.guidance_w=7)."),
    resume: Optional[str] = typer.Option(
        None, "--resume", help="Continue a run: 'auto', 'auto-or-new', a run folder or a checkpoint folder (as train)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete the run already in --out and start over."),
    out: Optional[str] = typer.Option(None, "--out", help="Run folder (overrides out_dir in the config)."),
) -> None:
    """Distil a model folder into a few-step one (latent consistency distillation, text-free clips included)."""
    from tft2v.config import load_config
    from tft2v.train.distill_trainer import distill as run_distillation

    # The student starts as the teacher; a --set that says otherwise is reported by the trainer.
    sets = [f"distill.teacher={teacher}", "model.init=pretrained", f"model.init_path={teacher}", *(overrides or [])]
    if out is not None:
        sets.append(f"out_dir={out}")
    run_distillation(load_config(config, sets), resume=resume, overwrite=overwrite)
