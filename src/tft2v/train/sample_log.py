"""``samples.jsonl``: which samples every training step consumed, one row per (step, rank).

Row: ``{"step": n, "rank": r, "epoch": e, "images": [keys], "videos": [keys], "image_epochs": [...],
"video_epochs": [...]}`` (with data.buckets also ``"image_buckets"``, ``"video_buckets"``: each
sample's bucket ``"HxWxF"``), ``step`` counted as in ``metrics.jsonl`` (the optimizer step the samples
went into, from 1), ``epoch`` the epoch the step's main stream (videos, else images) is in, and the
per-sample epochs beside the keys (a step can straddle two epochs). Every rank's row is gathered to the
main process, which writes them in rank order — so order, coverage per epoch and resume can be checked
from outside the trainer.
"""

from __future__ import annotations

import json
from pathlib import Path

NAME = "samples.jsonl"


def step_row(step: int, rank: int, batches: list[dict], epochs: dict) -> dict:
    """This rank's row for optimizer step ``step`` from its micro-batches (mixing-loader steps)."""
    row = {"step": step, "rank": rank,
           "epoch": epochs.get("videos", epochs.get("captioned_videos", epochs.get("images")))}
    for branch, name in (("image", "images"), ("video", "videos")):
        parts = [b[branch] for b in batches if b[branch] is not None]
        row[name] = [key for p in parts for key in p["key"]]
        row[f"{branch}_epochs"] = [e for p in parts for e in p.get("epoch", [None] * len(p["key"]))]
        if any("bucket" in p for p in parts):
            row[f"{branch}_buckets"] = [b for p in parts for b in p.get("bucket", [None] * len(p["key"]))]
    return row


class SampleLog:
    """Appends every rank's row per step to ``<run>/samples.jsonl`` (collective: all ranks call ``write``)."""

    def __init__(self, run_dir: str | Path, accelerator):
        self.accelerator = accelerator
        self._file = None
        if accelerator.is_main_process:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            self._file = open(Path(run_dir) / NAME, "a", buffering=1)

    def write(self, row: dict) -> None:
        from accelerate.utils import gather_object

        rows = gather_object([row]) if self.accelerator.num_processes > 1 else [row]
        if self._file is not None:
            for r in sorted(rows, key=lambda r: r["rank"]):
                self._file.write(json.dumps(r) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
