"""Wilson intervals and paired bootstrap differences against known answers."""

import numpy as np
import pytest

from tft2v.errors import TFT2VError
from tft2v.metrics.stats import paired_difference, wilson_interval


def test_wilson_known_values():
    # Textbook value: 8 of 10 → (0.490, 0.943).
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and 0.1 < high < 0.2
    with pytest.raises(TFT2VError, match="successes"):
        wilson_interval(11, 10)


def test_paired_difference_detects_a_shift_and_not_noise():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 60)
    shifted = paired_difference(a, a + 0.5 + rng.normal(0, 0.2, 60))
    assert shifted.positive and not shifted.negative and shifted.delta == pytest.approx(0.5, abs=0.1)
    same = paired_difference(a, a + rng.normal(0, 0.2, 60))
    assert same.low < 0 < same.high and not same.positive
    worse = paired_difference([True] * 20, [False] * 20)
    assert worse.negative and worse.delta == -1.0


def test_paired_difference_skips_undefined_pairs_and_checks_lengths():
    d = paired_difference([1.0, None, 2.0, 3.0], [2.0, 5.0, None, 4.0])
    assert d.pairs == 2 and d.delta == 1.0 and d.low == d.high == 1.0
    assert paired_difference([None], [1.0]).pairs == 0
    with pytest.raises(TFT2VError, match="equal length"):
        paired_difference([1.0], [1.0, 2.0])
