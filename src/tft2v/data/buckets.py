"""Aspect / length buckets: train on data of mixed geometry without cropping most of it away.

A :class:`Bucket` is one training geometry, ``height × width × frames`` with its own micro-batch size
(``frames = 1``: the image branch; ``frames > 1``: the video branches). Each sample goes to the bucket
whose aspect ratio is nearest in log ratio among those it can fill — a clip only to buckets with at most
the frames it has at the data's fps — ties going to more frames, then more pixels, then config order.

An epoch's plan (:func:`plan_epoch`) is a function of (seed, epoch) alone, so every rank computes the
same one: per bucket the samples are shuffled and cut into micro-batches of the bucket's batch size
(the last one may be smaller, so every sample is used once), the micro-batches are shuffled together,
the list is padded to a multiple of the world size by repeating from its start, and rank ``r`` takes
micro-batch ``i·W + r``. Ranks may therefore hold different shapes in one step.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

import numpy as np

from tft2v.errors import ConfigError

log = logging.getLogger("tft2v.data")

_SHORT = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*[xX]\s*(\d+)\s*:\s*(\d+)\s*")
FIELDS = ("height", "width", "frames", "batch")


@dataclass(frozen=True)
class Bucket:
    """One training geometry and its per-rank micro-batch size."""

    height: int
    width: int
    frames: int
    batch: int

    def __post_init__(self):
        if min(self.height, self.width, self.frames, self.batch) < 1:
            raise ConfigError(f"bucket {self.name}:{self.batch} needs positive height, width, frames and batch")

    @property
    def name(self) -> str:
        """``"HxWxF"``, as the sample log writes it."""
        return f"{self.height}x{self.width}x{self.frames}"

    @property
    def log_aspect(self) -> float:
        return math.log(self.width / self.height)

    @classmethod
    def coerce(cls, key: str, value) -> "Bucket":
        """A config value: ``"HxWxF:B"`` or a mapping ``{height, width, frames, batch}``."""
        if isinstance(value, str):
            match = _SHORT.fullmatch(value)
            if not match:
                raise ConfigError(f"{key} must look like HxWxF:B (e.g. 256x448x16:2), got {value!r}")
            return cls(*(int(g) for g in match.groups()))
        if isinstance(value, dict):
            if set(value) != set(FIELDS):
                raise ConfigError(f"{key} must have exactly the keys {list(FIELDS)}, got {sorted(value)}")
            bad = [k for k in FIELDS if isinstance(value[k], bool) or not isinstance(value[k], int)]
            if bad:
                raise ConfigError(f"{key}.{bad[0]} must be an integer, got {value[bad[0]]!r}")
            return cls(**{k: value[k] for k in FIELDS})
        raise ConfigError(f"{key} must be a string HxWxF:B or a mapping, got {value!r}")


def check_buckets(buckets: tuple[Bucket, ...]) -> None:
    """No geometry twice (its samples could go to either)."""
    seen = set()
    for b in buckets:
        if b.name in seen:
            raise ConfigError(f"data.buckets lists {b.name} twice")
        seen.add(b.name)


def frames_at(duration: float, real_fps: float, fps: float) -> int:
    """Frames a video of ``duration`` s at ``real_fps`` gives when sampled at ``fps`` (never faster than
    its own rate; the read_clip sampling rule without its lower-stride fallback)."""
    if duration <= 0 or real_fps <= 0:
        return 0
    step = 1.0 / min(fps, real_fps)
    return int(math.floor((duration - 1.0 / real_fps) / step + 1e-6)) + 1


def assign(height: int, width: int, frames: int, buckets: tuple[Bucket, ...]) -> int | None:
    """Index of the bucket a sample of this display size and frame count goes to, or None (too short)."""
    aspect = math.log(width / height)
    fits = [i for i, b in enumerate(buckets) if b.frames <= frames]
    if not fits:
        return None
    return min(fits, key=lambda i: (abs(buckets[i].log_aspect - aspect), -buckets[i].frames,
                                    -buckets[i].height * buckets[i].width, i))


def plan_epoch(assigned: list[int | None], buckets: tuple[Bucket, ...], seed: int, epoch: int,
               world_size: int, salt: int = 0) -> tuple[list[tuple[int, list[int]]], int]:
    """The epoch's micro-batches ``(bucket index, sample indices)`` over all ranks, padded to a multiple
    of ``world_size``, and how many were repeated to pad. ``salt`` separates the plans of streams."""
    rng = np.random.default_rng([int(seed), int(epoch), int(salt)])
    groups: dict[int, list[int]] = {}
    for index, bucket in enumerate(assigned):
        if bucket is not None:
            groups.setdefault(bucket, []).append(index)
    batches: list[tuple[int, list[int]]] = []
    for bucket in sorted(groups):
        members = np.asarray(groups[bucket])[rng.permutation(len(groups[bucket]))]
        size = buckets[bucket].batch
        batches += [(bucket, [int(i) for i in members[k:k + size]]) for k in range(0, len(members), size)]
    if not batches:
        return [], 0
    batches = [batches[i] for i in rng.permutation(len(batches))]
    pad = -len(batches) % world_size
    batches += [batches[i % len(batches)] for i in range(pad)]
    return batches, pad
