"""A read-only list of :class:`Item` packed into one bytes buffer and an offsets array.

A source travels to each DataLoader worker pickled (workers start from a fork server,
:mod:`tft2v.data.workers`). As a list, 100,000 Items pickle in ~0.4 s and unpickle in ~0.5 s per worker
(2-core box); packed, they are two buffers that pickle in milliseconds, and an Item is rebuilt from its
JSON row when read. With no Python object per item, a forked worker does not copy the list's pages
either by touching reference counts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from tft2v.data.media_source import Item


class PackedItems(Sequence):
    """``items[i]`` → a fresh :class:`Item`; ``len(items)``; immutable."""

    def __init__(self, items):
        rows = [json.dumps(item.to_row(), ensure_ascii=False, separators=(",", ":")).encode() for item in items]
        self._offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum([len(r) for r in rows], out=self._offsets[1:])
        self._blob = b"".join(rows)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"item {i} of {n}")
        i %= n
        return Item.from_row(json.loads(self._blob[self._offsets[i]:self._offsets[i + 1]]))


def pack_items(items) -> Sequence[Item]:
    """``items`` packed, or as a list when one holds in-memory media (bytes have no JSON row)."""
    if isinstance(items, PackedItems):
        return items
    items = list(items)
    if any(isinstance(item.media, bytes) for item in items):
        return items
    return PackedItems(items)
