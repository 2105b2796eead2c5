"""One way to split a finite dataset over epochs, ranks and DataLoader workers.

Every finite stream in tft2v (folders, manifests, VGen lists, local tar shards, the latent cache,
the toy world) orders a rank's samples the same way: epoch ``e`` is the permutation seeded by
(seed, e), identical on every process, and rank ``r`` of ``R`` takes ``perm[r::R]`` (the
``DistributedSampler`` rule without padding, so each sample is used exactly once per epoch and never
by two ranks in one epoch). A rank's stream is the concatenation of its epochs, and a *position* ``p``
in it names (epoch, index) uniquely — which is what a resumed run jumps to, without reading anything
it has already used.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler, get_worker_info

from tft2v.errors import TFT2VError


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """(n,) sample indices of one epoch: a permutation seeded by (seed, epoch), or 0..n-1 unshuffled."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def shard_indices(n: int, seed: int, epoch: int, shard: int, num_shards: int, shuffle: bool = True) -> np.ndarray:
    """The indices shard ``shard`` of ``num_shards`` reads in ``epoch`` (ranks, or ranks × workers)."""
    if not 0 <= shard < num_shards:
        raise TFT2VError(f"rank {shard} is outside world_size {num_shards}")
    mine = epoch_order(n, seed, epoch, shuffle)[shard::num_shards]
    if len(mine) == 0:
        raise TFT2VError(f"a stream of {n} samples cannot feed {num_shards} readers (ranks x workers); "
                         "use fewer processes or workers, or more data")
    return mine


def worker_shard(rank: int, world_size: int) -> tuple[int, int]:
    """(shard, num_shards) of this process: ``rank * workers + worker`` when inside a DataLoader worker."""
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world_size * workers


def shard_length(n: int, shard: int, num_shards: int) -> int:
    """How many of ``n`` samples shard ``shard`` reads per epoch (the same every epoch)."""
    return len(range(shard, n, num_shards))


def locate(position: int, n: int, shard: int, num_shards: int) -> tuple[int, int]:
    """(epoch, offset within that epoch's shard) of a position in a shard's endless stream."""
    length = shard_length(n, shard, num_shards)
    if length == 0:
        raise TFT2VError(f"a stream of {n} samples cannot feed {num_shards} readers (ranks x workers)")
    return divmod(int(position), length)


class EpochSampler(Sampler):
    """Endless ``(epoch, index, position)`` keys of one rank's stream, starting at ``start``.

    Used as a DataLoader ``sampler`` over a map-style source (``source[(epoch, index, position)]``):
    the loader's workers decode in parallel but hand samples back in this order, so the stream is the
    same for any number of workers, and a resume constructs the sampler at the next position.
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 start: int = 0):
        self.n, self.seed, self.rank, self.world_size = int(n), int(seed), int(rank), int(world_size)
        self.shuffle, self.start = shuffle, int(start)
        shard_indices(self.n, self.seed, 0, self.rank, self.world_size, shuffle)  # fail early on too few

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        epoch, offset = locate(self.start, self.n, self.rank, self.world_size)
        position = self.start
        while True:
            for index in shard_indices(self.n, self.seed, epoch, self.rank, self.world_size, self.shuffle)[offset:]:
                yield epoch, int(index), position
                position += 1
            epoch, offset = epoch + 1, 0
