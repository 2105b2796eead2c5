"""The base of every pixel source: the SAMPLE record, decoding one item, skip counting, collating.

Layout: a sample's ``pixels`` is float32 ``(C, F, H, W)`` in [-1, 1] (F = 1 for an image); ``collate``
batches them to ``(B, C, F, H, W)``. uint8 ``(F, H, W, C)`` exists only inside video_io/image_io.

SAMPLE = {"pixels": (3, F, H, W), "caption": str ('' if none), "has_text": bool,
          "cond_frame": (3, H, W) (or whatever ``image_transform`` returns), "key": str, "meta": dict,
          "epoch": int, "position": int (training streams: where the sample sits in its rank's stream)}

Per-sample randomness (clip start, random condition frame) comes from a generator seeded by
(seed, epoch, key), so it does not depend on how samples are split over ranks and workers, and a new
epoch draws new clip windows and condition frames.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset

from tft2v.data.image_io import read_image
from tft2v.data.robust import SampleSkipped, SkipStats, classify
from tft2v.data.sharding import worker_shard
from tft2v.data.video_io import read_clip
from tft2v.errors import TFT2VError

CondFrame = str | int


@dataclass(frozen=True)
class TarMember:
    """A member of a local tar shard, read only when its sample is decoded."""

    path: str
    offset: int
    size: int

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise SampleSkipped("corrupt", f"{self.path} ends inside a member at byte {self.offset}")
        return data


@dataclass
class Item:
    """One entry of a source before decoding: ``media`` is a path/URL or the file's bytes."""

    key: str
    media: str | bytes | TarMember
    caption: str | None = None
    caption_path: str | None = None  # a sidecar .txt read lazily, at decode time
    meta: dict = field(default_factory=dict)

    def read_caption(self) -> str:
        """The caption, stripped: ``caption``, else the sidecar's text, else ``""``."""
        caption = self.caption
        if caption is None and self.caption_path is not None:
            caption = Path(self.caption_path).read_text(encoding="utf-8", errors="replace") if (
                os.path.isfile(self.caption_path)) else ""
        return (caption or "").strip()

    def to_row(self) -> dict:
        """A JSON-ready dict (a path or tar member as media, not bytes); :meth:`from_row` inverts it."""
        media = self.media
        if isinstance(media, bytes):
            raise TypeError(f"item {self.key}: in-memory media has no JSON row")
        return {"key": self.key, "media": [media.path, media.offset, media.size] if isinstance(media, TarMember)
                else media, "caption": self.caption, "caption_path": self.caption_path, "meta": self.meta}

    @classmethod
    def from_row(cls, row: dict) -> "Item":
        media = row["media"]
        return cls(key=row["key"], media=TarMember(*media) if isinstance(media, list) else media,
                   caption=row["caption"], caption_path=row["caption_path"], meta=row["meta"])


def _dist_defaults(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = rank if rank is not None else (torch.distributed.get_rank() if initialised else 0)
        world_size = world_size if world_size is not None else (
            torch.distributed.get_world_size() if initialised else 1)
    if not 0 <= rank < world_size:
        raise TFT2VError(f"rank {rank} is outside world_size {world_size}")
    return rank, world_size


def _to_tensor(clip: np.ndarray) -> torch.Tensor:
    """uint8 ``(F, H, W, C)`` → float32 ``(C, F, H, W)`` in [-1, 1]."""
    return torch.from_numpy(clip).permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)


class MediaSource(IterableDataset):
    """Base of all sources: sharding, seeding, decoding an ``Item`` into a SAMPLE, skip counting.

    Subclasses implement ``_iter_items(rng, shard, num_shards)``.
    """

    def __init__(self, kind: str = "video", num_frames: int = 16, fps: float = 8.0,
                 size: tuple[int, int] | None = (256, 448), cond_frame: CondFrame = "middle",
                 image_transform: Callable[[torch.Tensor], torch.Tensor] | None = None, seed: int = 0,
                 shuffle: bool = True, shuffle_buffer: int = 1000, rank: int | None = None,
                 world_size: int | None = None, decode_timeout: float = 30.0):
        if kind not in ("image", "video"):
            raise TFT2VError(f"kind must be 'image' or 'video', got {kind!r}")
        if num_frames < 1 or fps <= 0:
            raise TFT2VError(f"need num_frames >= 1 and fps > 0, got {num_frames} and {fps}")
        if not (cond_frame in ("middle", "first", "random") or isinstance(cond_frame, int)):
            raise TFT2VError(f"cond_frame must be 'middle', 'first', 'random' or an int, got {cond_frame!r}")
        frames = 1 if kind == "image" else num_frames
        if isinstance(cond_frame, int) and not -frames <= cond_frame < frames:
            raise TFT2VError(f"cond_frame {cond_frame} is outside a {frames}-frame clip")
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise TFT2VError(f"size must be (H, W) with positive sides, got {size!r}")
        self.kind, self.num_frames, self.fps = kind, int(num_frames), float(fps)
        self.size = tuple(size) if size is not None else None
        self.cond_frame, self.image_transform = cond_frame, image_transform
        self.seed, self.shuffle, self.shuffle_buffer = int(seed), shuffle, int(shuffle_buffer)
        self.rank, self.world_size = _dist_defaults(rank, world_size)
        self.decode_timeout = float(decode_timeout)
        self.stats = SkipStats()
        # Shared (lock-free, one writer: the parent) so persistent workers see set_epoch.
        self._epoch = mp.RawValue("q", 0)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for a new epoch (deterministic in seed and epoch)."""
        self._epoch.value = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def _shard(self) -> tuple[int, int]:
        return worker_shard(self.rank, self.world_size)

    def __iter__(self) -> Iterator[dict]:
        return (sample for sample in self.iter_with_skips() if sample is not None)

    def iter_with_skips(self) -> Iterator[dict | None]:
        """Like iterating the source, but yields None for each skipped item (for progress and limits)."""
        shard, num_shards = self._shard()
        rng = np.random.default_rng([self.seed, self.epoch, shard])
        for item in self._iter_items(rng, shard, num_shards):
            yield self.decode_item(item)

    def _iter_items(self, rng: np.random.Generator, shard: int, num_shards: int) -> Iterator[Item]:
        raise NotImplementedError

    def decode_item(self, item: Item, epoch: int | None = None, geometry: tuple[int, int, int] | None = None
                    ) -> dict | None:
        """Decode one item into a SAMPLE (randomness of ``epoch``, default ``self.epoch``; ``geometry``
        (H, W, F) in place of the source's size and frames, for a bucket); on failure count the skip and
        return None."""
        try:
            sample = self._decode(item, self.epoch if epoch is None else epoch, geometry)
        except Exception as exc:  # noqa: BLE001 - every failure of one file is a counted skip
            self.stats.add_skip(classify(exc), item.key, f"{type(exc).__name__}: {exc}")
            return None
        self.stats.add_ok()
        return sample

    def _decode(self, item: Item, epoch: int, geometry: tuple[int, int, int] | None = None) -> dict:
        media = item.media.read() if isinstance(item.media, TarMember) else item.media
        if isinstance(media, bytes):
            if not media:
                raise SampleSkipped("empty", "zero-length payload")
        elif "://" not in media and os.path.isfile(media) and os.path.getsize(media) == 0:
            raise SampleSkipped("empty", "zero-length file")
        rng = np.random.default_rng([self.seed, epoch, zlib.crc32(item.key.encode())])
        size, frames = (self.size, self.num_frames) if geometry is None else (geometry[:2], geometry[2])
        if self.kind == "video":
            clip, meta = read_clip(media, frames, self.fps, size, rng, timeout_s=self.decode_timeout)
        else:
            image, meta = read_image(media, size)
            clip = image[None]  # (1, H, W, C)
        pixels = _to_tensor(clip)  # (C, F, H, W)
        index = self._cond_index(pixels.shape[1], rng)
        cond = pixels[:, index].clone()  # (C, H, W)
        if self.image_transform is not None:
            cond = self.image_transform(cond)
        caption = item.read_caption()
        source = media if isinstance(media, str) else item.meta.get("source", item.key)
        return {"pixels": pixels, "caption": caption, "has_text": bool(caption), "cond_frame": cond, "epoch": epoch,
                "key": item.key, "meta": {**item.meta, **meta, "source": source, "kind": self.kind,
                                          "cond_index": index}}

    def _cond_index(self, frames: int, rng: np.random.Generator) -> int:
        if self.cond_frame == "middle":
            return frames // 2
        if self.cond_frame == "first":
            return 0
        if self.cond_frame == "random":
            return int(rng.integers(frames))
        return int(self.cond_frame) % frames


def as_is(sample):
    """A DataLoader ``collate_fn`` for loaders that hand out whole samples or micro-batches (a module-level
    function, so worker processes can pickle it)."""
    return sample


def collate(samples: list[dict]) -> dict:
    """Stack SAMPLEs of one shape into a BATCH: pixels (B, 3, F, H, W), cond_frame (B, ...), has_text
    (B,) bool; caption/key/meta (and epoch and bucket, when the samples carry them) as lists."""
    if not samples:
        raise TFT2VError("cannot collate an empty list of samples")
    shapes = {tuple(s["pixels"].shape) for s in samples}
    if len(shapes) != 1:
        raise TFT2VError(f"samples in one batch have different pixel shapes {sorted(shapes)}; "
                         f"keys {[s['key'] for s in samples]}")
    batch = {
        "pixels": torch.stack([s["pixels"] for s in samples]),
        "caption": [s["caption"] for s in samples],
        "has_text": torch.tensor([bool(s["has_text"]) for s in samples], dtype=torch.bool),
        "cond_frame": torch.stack([s["cond_frame"] for s in samples]),
        "key": [s["key"] for s in samples],
        "meta": [s["meta"] for s in samples],
    }
    if all("epoch" in s for s in samples):
        batch["epoch"] = [int(s["epoch"]) for s in samples]
    if all("bucket" in s for s in samples):
        batch["bucket"] = [s["bucket"] for s in samples]
    return batch
