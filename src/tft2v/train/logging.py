"""Run logging on the main process: a tqdm progress bar (it/s, ETA, loss), JSONL and experiment trackers.

``metrics.jsonl`` gets one JSON object per logged step (``step``, ``time``, per-branch losses, lr,
grad norm, steps/s), written here. The numeric values also go to the experiment trackers of
``train.trackers`` through accelerate (``Accelerator(log_with=...)``, see :func:`accelerator_kwargs`):
TensorBoard under ``<run>/tensorboard/tft2v``, wandb under ``<run>/wandb`` in offline mode unless the
user sets ``WANDB_MODE`` (training never reaches the network on its own). Other ranks get a logger
that does nothing, so the trainer calls it unconditionally.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

from tft2v.errors import ConfigError

PROJECT = "tft2v"  # the wandb project and the TensorBoard run folder name


def accelerator_kwargs(trackers: tuple[str, ...], run_dir: str | Path) -> dict:
    """``Accelerator(...)`` keywords that enable ``trackers`` with their files inside ``run_dir``."""
    if not trackers:
        return {}
    if "wandb" in trackers and importlib.util.find_spec("wandb") is None:
        # checked when training starts, not when the config loads: a run trained with wandb must stay
        # loadable (generation, export) on a machine without it
        raise ConfigError("train.trackers lists 'wandb' but the wandb package is not installed: "
                          "pip install wandb, or drop it from train.trackers")
    from accelerate.utils import ProjectConfiguration

    run_dir = Path(run_dir)
    return {"log_with": list(trackers),
            "project_config": ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard"))}


def flat_config(cfg) -> dict:
    """A Config as ``{"train.max_steps": 3, ...}`` with scalar values (what TensorBoard hparams accept)."""
    from tft2v.config import to_dict

    out: dict = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (bool, int, float, str)):
            out[prefix] = value
        else:  # lists, None, {}: their JSON text
            out[prefix] = json.dumps(value)

    walk("", to_dict(cfg))
    return out


class RunLogger:
    """Main-process logger. ``log(step, values)`` writes JSONL + trackers; ``advance`` moves the bar."""

    def __init__(self, run_dir: str | Path, total_steps: int, start_step: int = 0, enabled: bool = True,
                 progress: bool = True, accelerator=None, config=None):
        self.enabled = enabled
        self.start_time = time.time()
        self._bar = self._jsonl = None
        self._acc = accelerator if accelerator is not None and accelerator.log_with else None
        if not enabled:
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)
        if self._acc is not None:
            self._start_trackers(run_dir, start_step, config)
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                             dynamic_ncols=True, file=sys.stderr)

    def _start_trackers(self, run_dir: Path, start_step: int, config) -> None:
        os.environ.setdefault("WANDB_MODE", "offline")  # never the network unless the user asks for it
        init_kwargs = {
            # a resumed run rewrites the steps after its checkpoint: TensorBoard hides the old ones
            "tensorboard": {"purge_step": start_step + 1},
            "wandb": {"dir": str(run_dir), "name": run_dir.name},
        }
        self._acc.init_trackers(PROJECT, config=flat_config(config) if config is not None else None,
                                init_kwargs=init_kwargs)

    def advance(self, loss: float | None = None) -> None:
        if self._bar is not None:
            self._bar.update(1)
            if loss is not None:
                self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def log(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time() - self.start_time, 3), **values}
        self._jsonl.write(json.dumps(record) + "\n")
        scalars = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._acc is not None and scalars:
            self._acc.log(scalars, step=step)

    def message(self, text: str) -> None:
        """A line for the user that does not break the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        """Flush and close the bar, the JSONL file and the trackers; safe to call twice."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._acc is not None and self.enabled:
            # What accelerator.end_training() does minus destroying the process group: a logger must not
            # tear down collectives that the caller (a second Trainer, a test) may still use.
            for tracker in self._acc.trackers:
                tracker.finish()
            self._acc.trackers.clear()
            self._acc = None
