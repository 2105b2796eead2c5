"""WebDataset tar shards in the img2dataset / video2dataset layout, streamed with ``webdataset``.

Layout: samples are the SAMPLE dicts of ``tft2v.data.sources`` (``pixels`` float32 ``(C, F, H, W)``).
A shard holds members ``<key>.<ext>``: the media (``.jpg/.jpeg/.png/.webp`` or ``.mp4/.webm/...``) and an
optional caption (``.txt``, or ``.json`` with a ``caption``/``text`` field). Shards come from local paths,
brace patterns (``data/{00000..00099}.tar``) or any URL ``webdataset.gopen`` opens (http(s), pipe:, ...).
Shards are split over ranks × workers when there are enough of them, otherwise every worker streams all
shards and keeps every G-th sample. Order: seeded shard permutation, then a ``shuffle_buffer`` of samples.
A shard that cannot be opened or ends mid-member is counted as ``bad_shard`` and the stream goes on.
"""

from __future__ import annotations

import json
from typing import Iterator

import braceexpand
import numpy as np
from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from tft2v.data.robust import classify
from tft2v.data.sources import MediaSource, Item
from tft2v.errors import TFT2VError

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
VIDEO_KEYS = ("mp4", "webm", "mkv", "mov", "avi")


def expand_urls(spec: str) -> list[str]:
    """``a{0..2}.tar::b.tar`` → ['a0.tar', 'a1.tar', 'a2.tar', 'b.tar'] (``::`` joins patterns)."""
    urls = [u for part in spec.split("::") for u in braceexpand.braceexpand(part)]
    if not urls:
        raise TFT2VError(f"no shards in {spec!r}")
    return urls


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
        urls = list(self.urls)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(urls))
            urls = [urls[i] for i in order]
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
            except Exception as exc:  # noqa: BLE001 - truncated or damaged tar: keep what was read
                self.stats.add_skip("bad_shard", url, f"{type(exc).__name__}: {exc}")
            finally:
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
