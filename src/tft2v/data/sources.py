"""Streaming data sources: folders, CSV/JSONL manifests, VGen ``relpath|||caption`` lists (and tar
shards, see ``sources_webdataset``), all yielding the same SAMPLE dict.

Layout: a sample's ``pixels`` is float32 ``(C, F, H, W)`` in [-1, 1] (F = 1 for an image); the
DataLoader batches it to ``(B, C, F, H, W)``. uint8 ``(F, H, W, C)`` exists only inside video_io/image_io.

SAMPLE = {"pixels": (3, F, H, W), "caption": str ('' if none), "has_text": bool,
          "cond_frame": (3, H, W) (or whatever ``image_transform`` returns), "key": str, "meta": dict}

Every source is an ``IterableDataset`` sharded over ranks and DataLoader workers (global shard
``rank * num_workers + worker_id``), deterministic for a seed and epoch (``set_epoch``), and robust: a
file that cannot be used is skipped and counted in ``source.stats`` (see ``robust``). Per-sample
randomness (clip start, random condition frame) comes from a generator seeded by (seed, epoch, key), so
it does not depend on how samples are split over workers.
"""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from tft2v.data.image_io import read_image
from tft2v.data.robust import SampleSkipped, SkipStats, classify
from tft2v.data.video_io import read_clip
from tft2v.errors import TFT2VError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
VIDEO_EXTS = {".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv"}
CondFrame = str | int


@dataclass
class Item:
    """One entry of a source before decoding: ``media`` is a path/URL or the file's bytes."""

    key: str
    media: str | bytes
    caption: str | None = None
    caption_path: str | None = None  # a sidecar .txt read lazily, at decode time
    meta: dict = field(default_factory=dict)


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
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.rank * workers + worker, self.world_size * workers

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

    def decode_item(self, item: Item) -> dict | None:
        """Decode one item into a SAMPLE; on failure count the skip and return None."""
        try:
            sample = self._decode(item)
        except Exception as exc:  # noqa: BLE001 - every failure of one file is a counted skip
            self.stats.add_skip(classify(exc), item.key, f"{type(exc).__name__}: {exc}")
            return None
        self.stats.add_ok()
        return sample

    def _decode(self, item: Item) -> dict:
        media = item.media
        if isinstance(media, bytes):
            if not media:
                raise SampleSkipped("empty", "zero-length payload")
        elif "://" not in media and os.path.isfile(media) and os.path.getsize(media) == 0:
            raise SampleSkipped("empty", "zero-length file")
        rng = np.random.default_rng([self.seed, self.epoch, zlib.crc32(item.key.encode())])
        if self.kind == "video":
            clip, meta = read_clip(media, self.num_frames, self.fps, self.size, rng,
                                   timeout_s=self.decode_timeout)
        else:
            image, meta = read_image(media, self.size)
            clip = image[None]  # (1, H, W, C)
        pixels = _to_tensor(clip)  # (C, F, H, W)
        index = self._cond_index(pixels.shape[1], rng)
        cond = pixels[:, index].clone()  # (C, H, W)
        if self.image_transform is not None:
            cond = self.image_transform(cond)
        caption = item.caption
        if caption is None and item.caption_path is not None:
            caption = Path(item.caption_path).read_text(encoding="utf-8", errors="replace") if (
                os.path.isfile(item.caption_path)) else ""
        caption = (caption or "").strip()
        source = media if isinstance(media, str) else item.meta.get("source", item.key)
        return {"pixels": pixels, "caption": caption, "has_text": bool(caption), "cond_frame": cond,
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


class ListSource(MediaSource):
    """A finite list of items (folder scan or manifest): each epoch is a seeded permutation, split by shard.

    A full permutation is a perfect shuffle, so ``shuffle_buffer`` is not needed here (it is used by
    streamed tar shards).
    """

    def __init__(self, items: list[Item], **kw):
        super().__init__(**kw)
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def _iter_items(self, rng, shard, num_shards):
        order = np.arange(len(self.items))
        if self.shuffle:
            # Same permutation on every rank/worker (seeded by seed and epoch only) → disjoint shards.
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.items))
        for i in order[shard::num_shards]:
            yield self.items[i]


def scan_folder(root: str | os.PathLike, kind: str) -> list[Item]:
    """Media files under ``root`` (recursive, sorted) with optional sidecar ``<stem>.txt`` captions."""
    root = Path(root)
    exts = IMAGE_EXTS if kind == "image" else VIDEO_EXTS
    items = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in exts):
        rel = path.relative_to(root)
        items.append(Item(key=str(rel.with_suffix("")), media=str(path),
                          caption_path=str(path.with_suffix(".txt"))))
    return items


def _resolve(base: Path, path: str) -> str:
    if "://" in path or os.path.isabs(path):
        return path
    return str(base / path)


def read_manifest(path: str | os.PathLike) -> list[Item]:
    """CSV (header with ``path``, optional ``caption``) or JSONL (objects with ``path``, ``caption``)."""
    path = Path(path)
    base = path.parent
    rows: list[tuple[int, dict]] = []
    with open(path, encoding="utf-8", newline="") as f:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(f)
            if "path" not in (reader.fieldnames or []):
                raise TFT2VError(f"{path}: CSV manifest needs a 'path' column, found {reader.fieldnames}")
            rows = [(i + 2, row) for i, row in enumerate(reader)]
        else:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise TFT2VError(f"{path}:{i}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict) or not isinstance(row.get("path"), str):
                    raise TFT2VError(f"{path}:{i}: each JSONL line needs a string 'path'")
                rows.append((i, row))
    items = []
    for line_no, row in rows:
        rel = (row.get("path") or "").strip()
        if not rel:
            raise TFT2VError(f"{path}:{line_no}: empty 'path'")
        caption = row.get("caption")
        items.append(Item(key=rel, media=_resolve(base, rel),
                          caption=str(caption) if caption is not None else "",
                          meta={"line": line_no}))
    return items


def read_vgen_list(path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> list[Item]:
    """VGen list file: ``relpath|||caption`` per line (caption optional; blank and ``#`` lines skipped)."""
    path = Path(path)
    base = Path(data_dir) if data_dir is not None else path.parent
    items = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        rel, _, caption = line.partition("|||")
        items.append(Item(key=rel.strip(), media=_resolve(base, rel.strip()), caption=caption.strip(),
                          meta={"line": i}))
    return items


def build_source(spec: str | os.PathLike, kind: str = "video", data_dir: str | None = None,
                 **kw) -> MediaSource:
    """Pick the source for ``spec``: a folder, ``.csv``/``.jsonl`` manifest, VGen ``.txt``/``.list``
    file, or WebDataset shards (``.tar`` paths, brace patterns, URLs). ``kw`` go to ``MediaSource``."""
    text = os.fspath(spec)
    if "://" in text or text.startswith("pipe:") or text.endswith((".tar", ".tar}", ".tgz", ".tar.gz")) \
            or ("{" in text and ".." in text):
        from tft2v.data.sources_webdataset import TarShardSource

        return TarShardSource(text, kind=kind, **kw)
    path = Path(text)
    if path.is_dir():
        items = scan_folder(path, kind)
    elif not path.exists():
        raise TFT2VError(f"data source not found: {text}")
    elif path.suffix.lower() in (".csv", ".jsonl", ".ndjson"):
        items = read_manifest(path)
    elif path.suffix.lower() in (".txt", ".list", ".lst"):
        items = read_vgen_list(path, data_dir)
    else:
        raise TFT2VError(f"cannot tell the format of {text}: use a folder, .csv, .jsonl, .txt list or .tar")
    if not items:
        raise TFT2VError(f"data source {text} lists no {kind} files")
    return ListSource(items, kind=kind, **kw)


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def encoder_image_transform(size: int | tuple[int, int] = 224, mean=CLIP_MEAN, std=CLIP_STD
                            ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A ``cond_frame`` transform to an image encoder's input: (3, H, W) in [-1, 1] → (3, h, w)
    resized (shorter side, antialiased) + center-cropped and normalised with the encoder's mean/std
    (defaults: CLIP's)."""
    out_hw = (size, size) if isinstance(size, int) else tuple(size)
    mean_t = torch.tensor(mean).view(3, 1, 1)
    std_t = torch.tensor(std).view(3, 1, 1)

    def transform(frame: torch.Tensor) -> torch.Tensor:
        h, w = frame.shape[-2:]
        scale = max(out_hw[0] / h, out_hw[1] / w)
        cover = (max(out_hw[0], round(h * scale)), max(out_hw[1], round(w * scale)))
        x = torch.nn.functional.interpolate((frame[None] + 1) / 2, size=cover, mode="bicubic",
                                            antialias=True, align_corners=False)[0].clamp(0, 1)
        top, left = (cover[0] - out_hw[0]) // 2, (cover[1] - out_hw[1]) // 2
        x = x[:, top : top + out_hw[0], left : left + out_hw[1]]
        return (x - mean_t) / std_t

    return transform


def collate_samples(samples: list[dict]) -> dict:
    """Batch SAMPLEs of equal shape: pixels ``(B, C, F, H, W)``, cond_frame ``(B, ...)``, lists otherwise."""
    return {"pixels": torch.stack([s["pixels"] for s in samples]),
            "cond_frame": torch.stack([s["cond_frame"] for s in samples]),
            "caption": [s["caption"] for s in samples],
            "has_text": torch.tensor([s["has_text"] for s in samples]),
            "key": [s["key"] for s in samples], "meta": [s["meta"] for s in samples]}
