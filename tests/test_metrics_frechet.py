"""Fréchet distance: closed-form Gaussian cases, symmetry, streaming statistics."""

import numpy as np
import pytest

from tft2v.errors import TFT2VError
from tft2v.metrics.frechet import FeatureStats, frechet_distance, frechet_distance_from_stats


def test_diagonal_gaussians_match_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    var1, var2 = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    expected = ((mu1 - mu2) ** 2).sum() + (var1 + var2 - 2 * np.sqrt(var1 * var2)).sum()
    got = frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-10)


def test_commuting_full_covariances_match_closed_form():
    # Covariances sharing eigenvectors: d = |Δmu|² + Σ (√λ1 - √λ2)².
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    lam1, lam2 = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    s1, s2 = q @ np.diag(lam1) @ q.T, q @ np.diag(lam2) @ q.T
    mu = rng.normal(size=5)
    expected = ((np.sqrt(lam1) - np.sqrt(lam2)) ** 2).sum() + 4.0
    assert frechet_distance(mu, s1, mu + np.array([2.0, 0, 0, 0, 0]), s2) == pytest.approx(expected, rel=1e-9)


def test_symmetric_and_zero_for_identical():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(50, 8)), rng.normal(size=(40, 8)) * 2 + 1
    sa, sb = FeatureStats(8), FeatureStats(8)
    sa.update(a)
    sb.update(b)
    assert frechet_distance_from_stats(sa, sb) == pytest.approx(frechet_distance_from_stats(sb, sa), rel=1e-9)
    assert frechet_distance_from_stats(sa, sb) > 1.0
    assert frechet_distance_from_stats(sa, sa) == pytest.approx(0.0, abs=1e-8)


def test_rank_deficient_covariances_stay_real_and_zero():
    # Fewer samples than dimensions: singular covariances, where sqrtm(S1 S2) is numerically fragile.
    x = np.random.default_rng(3).normal(size=(10, 64))
    s = FeatureStats(64)
    s.update(x)
    assert frechet_distance(s.mean, s.cov, s.mean, s.cov) == pytest.approx(0.0, abs=1e-6)


def test_streaming_stats_equal_numpy(tmp_path):
    x = np.random.default_rng(4).normal(size=(103, 7)) * 5 + 3
    stats, other = FeatureStats(7), FeatureStats(7)
    for chunk in np.array_split(x[:60], 7):
        stats.update(chunk)
    other.update(x[60:])
    stats.merge(other)
    assert stats.count == 103
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(x, rowvar=False), rtol=1e-10)
    stats.save(tmp_path / "ref.npz")
    back = FeatureStats.load(tmp_path / "ref.npz")
    np.testing.assert_array_equal(back.cov, stats.cov)


def test_bad_input_is_a_user_error():
    s = FeatureStats(4)
    with pytest.raises(TFT2VError, match="shape"):
        s.update(np.zeros((3, 5)))
    with pytest.raises(TFT2VError, match="no features"):
        _ = s.mean
    with pytest.raises(TFT2VError, match="NaN"):
        s.update(np.full((2, 4), np.nan))
