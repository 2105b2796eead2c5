"""Fréchet distance between Gaussians and a streaming float64 mean/covariance accumulator.

FVD and FID are both ``||mu1 - mu2||² + tr(S1 + S2 - 2 (S1 S2)^½)`` over network features; only the
feature network differs. Features arrive in batches ``(N, D)``; :class:`FeatureStats` keeps running
sums so the features themselves never have to be held.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tft2v.errors import TFT2VError


class FeatureStats:
    """Running count, sum and sum of outer products of ``D``-dimensional features, in float64."""

    def __init__(self, dim: int):
        self.dim = int(dim)
        self.count = 0
        self._sum = np.zeros(self.dim, dtype=np.float64)
        self._outer = np.zeros((self.dim, self.dim), dtype=np.float64)

    def update(self, features: torch.Tensor | np.ndarray) -> None:
        """Adds a batch of features ``(N, D)``."""
        if isinstance(features, torch.Tensor):
            features = features.detach().to("cpu", torch.float64).numpy()
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise TFT2VError(f"features must have shape (N, {self.dim}), got {tuple(x.shape)}")
        if not np.isfinite(x).all():
            raise TFT2VError("features contain NaN or inf; the feature network or its input is broken")
        self.count += x.shape[0]
        self._sum += x.sum(axis=0)
        self._outer += x.T @ x

    def merge(self, other: FeatureStats) -> None:
        """Adds another accumulator's sums (e.g. from another process or shard)."""
        if other.dim != self.dim:
            raise TFT2VError(f"cannot merge feature stats of dim {other.dim} into dim {self.dim}")
        self.count += other.count
        self._sum += other._sum
        self._outer += other._outer

    @property
    def mean(self) -> np.ndarray:
        """Feature mean ``(D,)``."""
        if self.count == 0:
            raise TFT2VError("no features were accumulated")
        return self._sum / self.count

    @property
    def cov(self) -> np.ndarray:
        """Unbiased feature covariance ``(D, D)`` (divides by N - 1, like ``np.cov``)."""
        if self.count < 2:
            raise TFT2VError(f"a covariance needs at least 2 samples, got {self.count}")
        mu = self.mean
        cov = (self._outer - self.count * np.outer(mu, mu)) / (self.count - 1)
        return (cov + cov.T) / 2  # remove round-off asymmetry

    def save(self, path: str | Path) -> None:
        """Writes the sums to an ``.npz`` file (a cached reference set)."""
        np.savez(path, count=self.count, sum=self._sum, outer=self._outer)

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        """Reads an accumulator written by :meth:`save`."""
        with np.load(path) as data:
            stats = cls(data["sum"].shape[0])
            stats.count = int(data["count"])
            stats._sum = data["sum"].astype(np.float64)
            stats._outer = data["outer"].astype(np.float64)
        return stats


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix via its eigendecomposition."""
    eigvals, eigvecs = np.linalg.eigh(matrix)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance ``||mu1-mu2||² + tr(S1) + tr(S2) - 2 tr((S1 S2)^½)`` between two Gaussians.

    ``tr((S1 S2)^½)`` equals the sum of square roots of the eigenvalues of the symmetric PSD matrix
    ``S1^½ S2 S1^½`` (same spectrum as ``S1 S2``); computing it that way stays real and stable for
    the rank-deficient covariances that few samples in high dimension give, where ``sqrtm(S1 @ S2)``
    returns complex noise.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise TFT2VError(
            f"Gaussian shapes do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    return float(max(value, 0.0))  # tiny negative values are round-off of an exact 0


def frechet_distance_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """Fréchet distance between the Gaussians fitted to two feature accumulators."""
    if a.dim != b.dim:
        raise TFT2VError(f"feature dims differ: {a.dim} vs {b.dim}")
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)
