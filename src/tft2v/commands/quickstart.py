"""``tft2v quickstart [--out DIR] [--minutes N] [--seed S]``: the main job, offline on a CPU."""

from __future__ import annotations

from pathlib import Path

import typer

from tft2v.errors import TFT2VError


def quickstart(
    out: Path = typer.Option(Path("quickstart_out"), "--out", help="Folder for report.md, samples, plots, runs."),
    minutes: float = typer.Option(10.0, "--minutes", help="Time budget; step counts are fitted to it."),
    seed: int = typer.Option(0, "--seed", help="Seed of data, training and sampling."),
) -> None:
    """Shapes world → train (content stage + 4 recipe variants) → sample → evaluate → report.md.

    Shows TF-T2V's claims at toy scale: text-free videos give motion, the coherence loss smooths it,
    captioned videos add direction control, held-out colour×shape combos still come out right.
    """
    if minutes <= 0:
        raise TFT2VError(f"--minutes must be > 0, got {minutes}")
    from tft2v.quickstart import run_quickstart

    run_quickstart(out, minutes=minutes, seed=seed)
