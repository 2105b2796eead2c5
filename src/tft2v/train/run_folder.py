"""Run folders: what a training launch may do with ``--out`` before it writes anything.

A run folder holds ONE training history. A launch either starts it (the folder is empty or new),
continues it (``--resume``), or replaces it (``--overwrite``); anything else is an error, so a
forgotten ``--resume`` can never append a second run's steps to the first's logs and checkpoints.

* ``--resume auto``: the newest checkpoint of the run folder; none there is an error.
* ``--resume auto-or-new``: the same, but no checkpoint means a new run (a restartable job script).
* ``--resume PATH``: a checkpoint folder or a run folder (its newest), possibly of ANOTHER run folder
  (branching off a run into a new ``--out``).
* ``--overwrite``: removes the previous run's own artefacts (never unknown files) and starts over.

On resume at checkpoint step S the logs are cut back to step S (:func:`continue_jsonl`): the rows
written after the last checkpoint of a killed run are written again by the resumed one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from tft2v.errors import TFT2VError
from tft2v.train.checkpoint import list_checkpoints, resolve_resume

# What a training run writes into its folder; --overwrite removes exactly these. ``train.log`` is
# not here on purpose: whoever captures our console output (a shell ``> run/train.log``, ``tee``,
# quickstart) has opened it before we start, so removing it would lose the NEW run's log, and
# finding it would make every such launch look like a rerun.
RUN_ARTEFACTS = ("checkpoints", "metrics.jsonl", "samples.jsonl", "config.yaml", "tensorboard", "validation",
                 "model", "wandb")
# Logs that get one row per step and are cut back to the checkpoint on resume.
STEP_LOGS = ("metrics.jsonl", "samples.jsonl")


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


def prepare_run_folder(run_dir: str | Path, resume: str | None, overwrite: bool, is_main: bool,
                       notify: Callable[[str], None] | None = None) -> Path | None:
    """Check (all ranks) and clear (main rank, ``overwrite``) ``run_dir``; return the checkpoint to resume or None."""
    run_dir = Path(run_dir)
    say = (notify or _stderr) if is_main else (lambda text: None)
    if overwrite and resume:
        raise TFT2VError(f"--overwrite and --resume {resume} contradict each other: --overwrite starts "
                         f"{run_dir} over, --resume continues a run; pass only one")
    if overwrite:
        if is_main:
            removed = remove_run(run_dir)
            if removed:
                say(f"--overwrite: removed the previous run in {run_dir} ({', '.join(removed)})")
        return None
    if not resume:
        found = run_artefacts(run_dir)
        if found:
            raise TFT2VError(f"run folder {run_dir} already holds a run ({', '.join(found[:3])}); pass --resume auto "
                             f"to continue it or --overwrite to start over")
        return None
    checkpoint = resolve_resume(resume, run_dir)
    if checkpoint is None:
        say(f"no checkpoint in {run_dir / 'checkpoints'}: starting a new run")
        return None
    _check_no_newer_checkpoints(run_dir, checkpoint, resume)
    return checkpoint


def run_artefacts(run_dir: str | Path) -> list[str]:
    """Names of the previous run's artefacts present in ``run_dir`` (empty folders do not count)."""
    run_dir = Path(run_dir)
    found = []
    for name in RUN_ARTEFACTS:
        path = run_dir / name
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            found.append(name)
    return found


def remove_run(run_dir: str | Path) -> list[str]:
    """Delete the run artefacts of ``run_dir`` (not other files in it); return what was there."""
    run_dir = Path(run_dir)
    removed = []
    for name in RUN_ARTEFACTS:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def checkpoint_step(checkpoint: str | Path) -> int:
    """The optimizer step a checkpoint was saved at (its ``trainer_state.json``)."""
    return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text())["step"])


def _check_no_newer_checkpoints(run_dir: Path, checkpoint: Path, resume: str) -> None:
    # Resuming an older checkpoint while newer ones stay in run_dir/checkpoints would mix two histories,
    # and keep-last pruning would then delete the resumed run's fresh checkpoints before the stale ones.
    step = checkpoint_step(checkpoint)
    newer = [p for p in list_checkpoints(run_dir / "checkpoints") if checkpoint_step(p) > step]
    if newer:
        raise TFT2VError(f"--resume {resume}: run folder {run_dir} has checkpoints after step {step} "
                         f"({newer[-1].name}); resume its newest (--resume auto) or branch off into a new --out")


def source_run_dir(checkpoint: str | Path, run_dir: str | Path) -> Path | None:
    """The run folder ``checkpoint`` belongs to when that is not ``run_dir`` (a branch-off resume), else None."""
    checkpoint = Path(checkpoint).resolve()
    if checkpoint.parent.name != "checkpoints":
        return None
    source = checkpoint.parent.parent
    return None if source == Path(run_dir).resolve() else source


def continue_run_logs(run_dir: str | Path, checkpoint: str | Path | None, step: int) -> None:
    """Cut ``run_dir``'s step logs back to ``step`` (seeding them from the checkpoint's own run folder)."""
    source = source_run_dir(checkpoint, run_dir) if checkpoint is not None else None
    for name in STEP_LOGS:
        continue_jsonl(Path(run_dir) / name, step, source / name if source is not None else None)


def continue_jsonl(path: str | Path, step: int, source: str | Path | None = None) -> None:
    """Keep only the rows of ``path`` up to ``step`` (seeded from ``source`` when ``path`` is absent).

    Main process only. Rows with ``row["step"] <= step`` stay, including a summary row of an earlier
    launch that stopped there: it truly happened in this run's history. Rows with a larger step are
    dropped: the resumed run writes those steps again. Rows without an integer ``step`` cannot be
    placed before or after the checkpoint and are not ours to judge, so they stay. A line that is not
    a JSON object is the torn last write of a killed process (the logs are line-buffered) and goes.
    The file is rewritten atomically (temp file + ``os.replace``): a crash here leaves the old log.
    """
    path = Path(path)
    if path.is_file():
        text = path.read_text()
    elif source is not None and Path(source).is_file():
        text = Path(source).read_text()
    else:
        return
    kept = [line for line in text.splitlines() if _keep(line, step)]
    tmp = path.with_name(f".tmp-{path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def _keep(line: str, step: int) -> bool:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return False
    if not isinstance(row, dict):
        return False
    row_step = row.get("step")
    if not isinstance(row_step, int) or isinstance(row_step, bool):
        return True
    return row_step <= step
