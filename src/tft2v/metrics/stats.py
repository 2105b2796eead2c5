"""Uncertainty for small evaluation sets: Wilson intervals and paired bootstrap differences.

The quickstart compares models on a few dozen clips each, generated from the same prompts and seeds,
so a difference is only reported as real when its 95 % interval excludes zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tft2v.errors import TFT2VError


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % (for z = 1.96) Wilson score interval of a binomial proportion; (0, 1) when n = 0."""
    if not 0 <= successes <= n:
        raise TFT2VError(f"successes must be in [0, n={n}], got {successes}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Difference:
    """``mean(b) − mean(a)`` over the pairs both define, with a bootstrap interval."""

    delta: float
    low: float
    high: float
    pairs: int

    @property
    def positive(self) -> bool:
        return self.low > 0

    @property
    def negative(self) -> bool:
        return self.high < 0

    def __str__(self) -> str:
        if self.pairs == 0:
            return "n/a (no pairs to compare)"
        return f"{self.delta:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def paired_difference(a, b, resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Difference:
    """Paired bootstrap of ``mean(b - a)``: ``a[i]`` and ``b[i]`` are the same prompt and seed under two
    models; pairs where either is None (e.g. no object found) are left out. Booleans count as 0/1."""
    if len(a) != len(b):
        raise TFT2VError(f"paired samples must have equal length, got {len(a)} and {len(b)}")
    d = np.array([float(y) - float(x) for x, y in zip(a, b) if x is not None and y is not None])
    if d.size == 0:
        return Difference(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Difference(float(d.mean()), float(low), float(high), int(d.size))
