"""WebDataset tar shards in the img2dataset / video2dataset layout.

Layout: samples are the SAMPLE dicts of ``tft2v.data.media_source`` (``pixels`` float32 ``(C, F, H, W)``).
A shard holds members ``<key>.<ext>``: the media (an image or video type of :mod:`tft2v.data.media_types`,
e.g. ``.jpg`` or ``.mp4``) and an optional caption (``.txt``, or ``.json`` with a ``caption``/``text`` field).

* Local uncompressed shards (paths, brace patterns ``data/{00000..00099}.tar``, ``::``-joined lists) are
  indexed once — member offsets from the tar headers, captions read — and become a
  :class:`tft2v.data.sources.ListSource` whose items are read by offset at decode time: the same
  per-epoch permutation, rank split and exact resume by position as any list, i.e. by (shard, offset).
* URLs ``webdataset.gopen`` opens (http(s), pipe:, ...) and compressed shards cannot be read by offset;
  :class:`TarShardSource` streams one epoch of them: a shard permutation seeded by (seed, epoch), split
  over ranks × workers when there are enough shards (otherwise every worker streams all shards and keeps
  every G-th sample), then a ``shuffle_buffer`` seeded by (seed, epoch, reader); clip windows come from
  (seed, epoch, key) as everywhere. :class:`ShardStream` walks the epochs one after another.
A shard that cannot be opened or ends mid-member is counted as ``bad_shard`` and the rest goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import tarfile
from typing import Iterator

import braceexpand
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset
from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from tft2v.data.media_source import Item, MediaSource, TarMember, as_is
from tft2v.data.media_types import IMAGE_EXTS, VIDEO_EXTS
from tft2v.data.robust import SkipStats, classify
from tft2v.data.sharding import epoch_order
from tft2v.data.workers import worker_context
from tft2v.errors import TFT2VError

IMAGE_KEYS = tuple(ext[1:] for ext in IMAGE_EXTS)  # member suffixes: "jpg", not ".jpg"
VIDEO_KEYS = tuple(ext[1:] for ext in VIDEO_EXTS)


def expand_urls(spec: str) -> list[str]:
    """``a{0..2}.tar::b.tar`` → ['a0.tar', 'a1.tar', 'a2.tar', 'b.tar'] (``::`` joins patterns)."""
    urls = [u for part in spec.split("::") for u in braceexpand.braceexpand(part)]
    if not urls:
        raise TFT2VError(f"no shards in {spec!r}")
    return urls


def is_streamed_spec(spec: str) -> bool:
    """Whether ``spec`` names shards that can only be streamed (URLs, pipes, compressed tars)."""
    if "://" in spec or spec.startswith("pipe:"):
        return True
    return is_tar_spec(spec) and any(u.endswith((".tgz", ".tar.gz")) for u in expand_urls(spec))


def is_tar_spec(spec: str) -> bool:
    """Whether ``spec`` names tar shards (a .tar path, a brace pattern, ``::``-joined shards)."""
    return "://" in spec or spec.startswith("pipe:") or spec.endswith((".tar", ".tar}", ".tgz", ".tar.gz")) \
        or ("{" in spec and ".." in spec) or "::" in spec


def index_tar_shards(spec: str, kind: str, stats: SkipStats) -> list[Item]:
    """Items of every sample in local shards, media as :class:`TarMember` (read at decode time).

    Missing shards count ``missing``; a shard cut inside a member keeps the samples before the cut and
    counts ``bad_shard``; a sample without a ``kind`` member counts ``wrong_type``.
    """
    media_keys = IMAGE_KEYS if kind == "image" else VIDEO_KEYS
    items: list[Item] = []
    for path in expand_urls(spec):
        if not os.path.isfile(path):
            stats.add_skip("missing", path, "shard not found")
            continue
        for key, members in _shard_groups(path, stats):
            media_key = next((k for k in media_keys if k in members), None)
            if media_key is None:
                stats.add_skip("wrong_type", f"{path}#{key}", f"no {kind} member, found {sorted(members)}")
                continue
            items.append(Item(key=key, media=members[media_key], caption=_indexed_caption(members),
                              meta={"source": f"{path}#{key}.{media_key}", "shard": path}))
    return items


def _shard_groups(path: str, stats: SkipStats) -> Iterator[tuple[str, dict]]:
    """(key, {ext: TarMember | caption bytes}) per complete sample of a local shard, in tar order."""
    size = os.path.getsize(path)
    key, members = None, {}
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                prefix, suffix = base_plus_ext(info.name)
                if prefix is None or not info.isfile():
                    continue
                if key is not None and prefix != key:
                    yield key, members
                    key, members = None, {}
                key = prefix
                if info.offset_data + info.size > size:
                    raise tarfile.ReadError(f"{info.name} is cut at byte {size}")
                suffix = suffix.lower()
                # Captions are tiny: read them now; media stays on disk until its sample is decoded.
                members[suffix] = tar.extractfile(info).read() if suffix in ("txt", "json") else TarMember(
                    path, info.offset_data, info.size)
    except (tarfile.TarError, OSError, EOFError) as exc:
        # The samples before the break are whole and stay; the one being read when it broke is dropped.
        stats.add_skip("bad_shard", path, f"{type(exc).__name__}: {exc}")
        return
    if key is not None:
        yield key, members


def _indexed_caption(members: dict) -> str:
    return caption_of({k: v for k, v in members.items() if k in ("txt", "json")})


def caption_of(sample: dict) -> str:
    """Caption from a ``.txt`` member, else from a ``.json`` member's ``caption`` or ``text`` field."""
    if "txt" in sample:
        return sample["txt"].decode("utf-8", errors="replace")
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError):
            return ""
        if isinstance(meta, dict):
            value = meta.get("caption") or meta.get("text") or ""
            return value if isinstance(value, str) else ""
    return ""


class TarShardSource(MediaSource):
    """Streams samples out of tar shards; see the module docstring for layout, sharding and shuffling."""

    def __init__(self, urls: str | list[str], **kw):
        super().__init__(**kw)
        self.urls = expand_urls(urls) if isinstance(urls, str) else list(urls)
        self.media_keys = IMAGE_KEYS if self.kind == "image" else VIDEO_KEYS

    def _iter_items(self, rng, shard, num_shards):
        urls = [self.urls[i] for i in epoch_order(len(self.urls), self.seed, self.epoch, self.shuffle)]
        split_shards = len(urls) >= num_shards
        if split_shards:
            urls = urls[shard::num_shards]
        items = self._items_from(urls)
        if not split_shards:
            items = (item for i, item in enumerate(items) if i % num_shards == shard)
        return self._buffered(items, rng) if self.shuffle and self.shuffle_buffer > 1 else items

    def _items_from(self, urls: list[str]) -> Iterator[Item]:
        for url in urls:
            try:
                stream = gopen(url)
            except Exception as exc:  # noqa: BLE001 - a missing/unreachable shard is a counted skip
                self.stats.add_skip("bad_shard" if classify(exc) != "missing" else "missing", url, str(exc))
                continue
            try:
                yield from self._group(url, tar_file_iterator(stream))
                stream.close()  # a pipe's command (cat, curl, ...) reports its failure here
            except Exception as exc:  # noqa: BLE001 - damaged tar or failed command: keep what was read
                self.stats.add_skip("bad_shard", url, f"{type(exc).__name__}: {exc}")
            finally:
                with contextlib.suppress(Exception):  # counted above, or the reader stopped early
                    stream.close()

    def _group(self, url: str, members) -> Iterator[Item]:
        """Group consecutive members by key (webdataset's ``base_plus_ext`` rule) into Items."""
        current: dict | None = None
        try:
            for member in members:
                prefix, suffix = base_plus_ext(member["fname"])
                if prefix is None:
                    continue
                if current is not None and prefix != current["__key__"]:
                    yield from self._to_item(url, current)
                    current = None
                current = current or {"__key__": prefix}
                current[suffix.lower()] = member["data"]
        except Exception:
            # The shard broke inside a later member: the sample read so far is complete, keep it.
            if current is not None:
                yield from self._to_item(url, current)
            raise
        if current is not None:
            yield from self._to_item(url, current)

    def _to_item(self, url: str, sample: dict) -> Iterator[Item]:
        key = sample["__key__"]
        media_key = next((k for k in self.media_keys if k in sample), None)
        if media_key is None:
            found = sorted(k for k in sample if not k.startswith("__"))
            self.stats.add_skip("wrong_type", f"{url}#{key}", f"no {self.kind} member, found {found}")
            return
        yield Item(key=key, media=sample[media_key], caption=caption_of(sample),
                   meta={"source": f"{url}#{key}.{media_key}", "shard": url})

    def _buffered(self, items: Iterator[Item], rng: np.random.Generator) -> Iterator[Item]:
        """Shuffle a stream with a buffer of ``shuffle_buffer`` items (undecoded, so it stays cheap)."""
        buffer: list[Item] = []
        for item in items:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(item)
                continue
            i = int(rng.integers(len(buffer)))
            yield buffer[i]
            buffer[i] = item
        rng.shuffle(buffer)
        yield from buffer


# A rank's epoch length is only known once the epoch has been read (skips, uneven shards), so the epoch
# is written into the position: position = epoch · EPOCH_SPAN + index of the item in that epoch's pass.
EPOCH_SPAN = 1 << 40


class _PassWithSkips(IterableDataset):
    """One epoch of a TarShardSource with None for each skipped item, so positions count every item
    whatever the decoder makes of it (a transient decode failure cannot shift a resumed stream)."""

    def __init__(self, source: TarShardSource):
        self.source = source

    def __iter__(self) -> Iterator[dict | None]:
        return self.source.iter_with_skips()


class ShardStream:
    """A TarShardSource read epoch after epoch by ``num_workers`` DataLoader processes, resumable at any
    position (see ``EPOCH_SPAN``).

    Each epoch sets the source's epoch (so the stream owns its source: one stream per source) and starts
    a fresh DataLoader with its own generator, so the global torch RNG is untouched. The DataLoader hands
    the workers' items back round-robin, each worker's in its own fixed order, so a pass is the same
    sequence every time it is read. A resume re-reads (and decodes) the current epoch's pass up to its
    position and drops what was used before: streamed shards cannot be read by offset. Workers start by
    ``worker_start`` (:mod:`tft2v.data.workers`).
    """

    def __init__(self, source: TarShardSource, num_workers: int = 0, prefetch_factor: int = 2,
                 worker_start: str = "forkserver"):
        self.source, self.num_workers, self.prefetch_factor = source, int(num_workers), int(prefetch_factor)
        self.context = worker_context(worker_start) if self.num_workers else None

    def iter_from(self, start: int) -> Iterator[dict]:
        epoch, skip = divmod(int(start), EPOCH_SPAN)
        while True:
            usable = 0
            for index, sample in enumerate(self._pass(epoch)):
                if sample is None:
                    continue
                usable += 1
                if index >= skip:
                    sample["position"] = epoch * EPOCH_SPAN + index
                    yield sample
            if usable == 0:
                raise TFT2VError(f"epoch {epoch} of {len(self.source.urls)} streamed shards gave rank "
                                 f"{self.source.rank} no usable {self.source.kind} samples ({self.source.stats})")
            epoch, skip = epoch + 1, 0

    def _pass(self, epoch: int) -> Iterator[dict | None]:
        self.source.set_epoch(epoch)
        if self.num_workers == 0:
            return self.source.iter_with_skips()
        return iter(DataLoader(_PassWithSkips(self.source), batch_size=None, num_workers=self.num_workers,
                               prefetch_factor=self.prefetch_factor, collate_fn=as_is,
                               multiprocessing_context=self.context,
                               generator=torch.Generator().manual_seed(self.source.seed)))

    def __iter__(self) -> Iterator[dict]:
        return self.iter_from(0)
