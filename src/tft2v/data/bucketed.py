"""One stream of micro-batches in aspect / length buckets (:mod:`tft2v.data.buckets`) over an indexed source.

Layout: a micro-batch is ``{"samples": [SAMPLE, ...], "position": p, "epoch": e, "bucket": "HxWxF"}``; its
samples' ``pixels`` are ``(C, F, H, W)`` of the bucket's geometry (collated to ``(B, C, F, H, W)``).

A rank's stream is the concatenation of its epochs; position ``p`` is (epoch, micro-batch) =
``divmod(p, per_rank)``, so a resume builds the sampler at the next position and decodes nothing it
used before. A micro-batch is decoded in one DataLoader worker; files that fail to decode are counted
skips and leave the micro-batch smaller (an all-failed micro-batch is passed over).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from functools import lru_cache

from torch.utils.data import Dataset, Sampler

from tft2v.data.buckets import Bucket, assign, frames_at, plan_epoch
from tft2v.data.index import DataIndex
from tft2v.data.sources import ListSource
from tft2v.errors import TFT2VError

log = logging.getLogger("tft2v.data")


def kind_buckets(buckets: tuple[Bucket, ...], kind: str) -> tuple[Bucket, ...]:
    """The buckets that serve a stream: frames = 1 for images, frames > 1 for videos."""
    return tuple(b for b in buckets if (b.frames == 1) == (kind == "image"))


def assign_index(index: DataIndex, buckets: tuple[Bucket, ...], kind: str, fps: float
                 ) -> tuple[list[int | None], dict[str, str]]:
    """Each item's bucket (None: left out) and why the left-out ones were: the probe's failure reason,
    or ``too_short`` for a clip shorter than every video bucket at ``fps``."""
    assigned: list[int | None] = []
    skipped: dict[str, str] = {}
    for item, geometry in zip(index.items, index.geometry):
        if geometry is None:
            assigned.append(None)
            skipped[item.key] = index.failures.get(item.key, "corrupt")
            continue
        frames = 1 if kind == "image" else frames_at(geometry["duration"], geometry["fps"], fps)
        bucket = assign(geometry["height"], geometry["width"], frames, buckets)
        assigned.append(bucket)
        if bucket is None:
            skipped[item.key] = "too_short"
    return assigned, skipped


def bucket_counts(assigned: list[int | None], buckets: tuple[Bucket, ...]) -> dict[str, int]:
    """Samples per bucket name (every bucket listed, empty ones with 0)."""
    counts = {b.name: 0 for b in buckets}
    for bucket in assigned:
        if bucket is not None:
            counts[buckets[bucket].name] += 1
    return counts


class BucketedSource(Dataset):
    """Map-style over ``(epoch, j, position)`` keys: this rank's ``j``-th micro-batch of ``epoch``."""

    def __init__(self, source: ListSource, index: DataIndex, buckets: tuple[Bucket, ...], name: str,
                 salt: int = 0):
        self.source, self.name, self.salt = source, name, int(salt)
        self.buckets = kind_buckets(buckets, source.kind)
        if not self.buckets:
            raise TFT2VError(f"data.buckets has no {'1-frame' if source.kind == 'image' else 'video'} bucket "
                             f"for data.{name}")
        self.assigned, skipped = assign_index(index, self.buckets, source.kind, source.fps)
        for key, reason in skipped.items():
            source.stats.add_skip(reason, key, "no bucket" if reason == "too_short" else "probe failed")
        self.counts = bucket_counts(self.assigned, self.buckets)
        empty = [name for name, n in self.counts.items() if n == 0]
        if empty and source.rank == 0:
            log.warning("data.%s: no sample falls into bucket(s) %s", name, ", ".join(empty))
        batches = sum(math.ceil(self.counts[b.name] / b.batch) for b in self.buckets)  # every epoch alike
        if not batches:
            raise TFT2VError(f"data.{name}: no sample fits any bucket ({dict(sorted(skipped.items())[:3])} ...)")
        pad = -batches % source.world_size
        if pad and source.rank == 0:
            log.info("data.%s: %d micro-batches per epoch, %d repeated to fill %d ranks", name, batches, pad,
                     source.world_size)
        self.per_rank = (batches + pad) // source.world_size

    @lru_cache(maxsize=2)
    def rank_plan(self, epoch: int) -> list[tuple[int, list[int]]]:
        """This rank's micro-batches of ``epoch`` (the same list on every rank, strided by rank)."""
        s = self.source
        plan, _ = plan_epoch(self.assigned, self.buckets, s.seed, epoch, s.world_size, self.salt)
        return plan[s.rank::s.world_size]

    def __len__(self) -> int:
        return self.per_rank

    def __getitem__(self, key: tuple[int, int, int]) -> dict | None:
        epoch, j, position = key
        bucket_index, members = self.rank_plan(epoch)[j]
        bucket = self.buckets[bucket_index]
        samples = []
        for i in members:
            sample = self.source.decode_item(self.source.items[i], epoch, (bucket.height, bucket.width, bucket.frames))
            if sample is not None:
                samples.append({**sample, "bucket": bucket.name})
        if not samples:
            return None
        return {"samples": samples, "position": position, "epoch": epoch, "bucket": bucket.name}

    def sampler(self, start: int = 0) -> "PlanSampler":
        return PlanSampler(self.per_rank, start)

    def iter_from(self, start: int) -> Iterator[dict]:
        """Endless in-process stream of micro-batches from position ``start``."""
        return (b for b in map(self.__getitem__, self.sampler(start)) if b is not None)

    @property
    def seed(self) -> int:
        return self.source.seed


class PlanSampler(Sampler):
    """Endless ``(epoch, j, position)`` keys from position ``start``, ``per_rank`` micro-batches an epoch."""

    def __init__(self, per_rank: int, start: int = 0):
        self.per_rank, self.start = int(per_rank), int(start)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        position = self.start
        while True:
            epoch, j = divmod(position, self.per_rank)
            yield epoch, j, position
            position += 1
