"""qbench.measure.stats: bootstrap CIs, Mann–Whitney U, stability, step detection."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qbench.measure.stats import (
    coefficient_of_variation,
    detect_step,
    is_stable,
    latency_change,
    mann_whitney_u,
    median_ci,
    paired_ratio_ci,
    proportion_ci,
    ratio_ci,
)


def _noisy(seed: int, n: int, center: float, rel: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return center * (1 + rel * rng.standard_normal(n)) + rng.exponential(center * rel / 2, n)


def test_paired_bootstrap_is_seeded_and_deterministic():
    a, b = _noisy(1, 40, 30.0), _noisy(2, 40, 12.0)
    first, again = paired_ratio_ci(a, b), paired_ratio_ci(a, b)
    assert first == again
    other = paired_ratio_ci(a, b, seed=1234)
    assert other.estimate == first.estimate and (other.low, other.high) != (first.low, first.high)


def test_known_synthetic_sets_give_the_known_interval():
    # Every pair has exactly the same ratio: every resample gives it, the CI is a point.
    den = _noisy(3, 25, 10.0, rel=0.3)
    ci = paired_ratio_ci(2.5 * den, den)
    assert ci.estimate == pytest.approx(2.5) and ci.low == pytest.approx(2.5)
    assert ci.high == pytest.approx(2.5)
    # num = [1, 2, 3] over den = 1: a resample's median is 1 with probability 7/27, 2 with
    # 13/27 and 3 with 7/27, so the 2.5% and 97.5% quantiles are exactly 1 and 3.
    ci = paired_ratio_ci([1.0, 2.0, 3.0], [1.0, 1.0, 1.0], resamples=20_000)
    assert (ci.estimate, ci.low, ci.high) == (2.0, 1.0, 3.0)


def test_pairing_cancels_shared_noise_that_unpaired_cannot():
    # Load bursts slow both models of a pair alike: the paired CI stays narrow.
    rng = np.random.default_rng(5)
    burst = np.exp(rng.normal(0, 0.4, 60))
    ref = 30.0 * burst * (1 + 0.01 * rng.standard_normal(60))
    unit = 12.0 * burst * (1 + 0.01 * rng.standard_normal(60))
    paired, unpaired = paired_ratio_ci(ref, unit), ratio_ci(ref, unit)
    assert paired.low < 2.5 < paired.high
    assert (paired.high - paired.low) < (unpaired.high - unpaired.low) / 5


def test_paired_ci_rejects_unequal_lengths():
    with pytest.raises(ValueError):
        paired_ratio_ci([1.0, 2.0], [1.0])


def test_mann_whitney_matches_the_textbook_value():
    # n1 = n2 = 3, complete separation: U = 0, z = (4.5 - 0.5) / sqrt(5.25).
    u, p = mann_whitney_u([1, 2, 3], [4, 5, 6])
    assert u == 0.0
    assert p == pytest.approx(math.erfc(4 / math.sqrt(5.25) / math.sqrt(2)))
    u, p = mann_whitney_u([1, 2, 3, 4], [1, 2, 3, 4])
    assert u == 8.0 and p == pytest.approx(1.0)


def test_unchanged_pair_not_flagged_shifted_one_is():
    old, new = _noisy(10, 40, 20.0), _noisy(11, 40, 20.0)
    assert not latency_change(old, new, 10).regression
    slower = latency_change(old, 1.2 * _noisy(11, 40, 20.0), 10)
    assert slower.regression and slower.ratio.low > 1.0
    # Significant but inside the threshold: not a regression.
    small = latency_change(old, 1.05 * _noisy(12, 400, 20.0, rel=0.01), 10)
    assert small.significant and not small.regression
    # Beyond the threshold by its point estimate but too few samples to be sure: not flagged.
    few = latency_change([20.0, 26.0], [24.0, 29.0], 10)
    assert few.ratio.estimate > 1.1 and not few.regression
    # Significant, estimate past the threshold, but the CI reaches below it: drift, not flagged.
    near = latency_change(_noisy(10, 40, 20.0, rel=0.1), 1.08 * _noisy(13, 40, 20.0, rel=0.1), 10)
    assert near.significant and near.ratio.estimate > 1.1 and near.ratio.low < 1.1
    assert not near.regression


def test_median_ci_brackets_the_median():
    values = _noisy(4, 50, 8.0)
    med, low, high = median_ci(values)
    assert low <= med <= high and med == pytest.approx(np.median(values))


def test_coefficient_of_variation_and_stability():
    assert coefficient_of_variation([10.0, 10.0, 10.0]) == 0.0
    cv = coefficient_of_variation([9.0, 10.0, 11.0])
    assert cv == pytest.approx(np.std([9, 10, 11], ddof=1) / 10)
    assert is_stable(cv) and not is_stable(0.2) and is_stable(None) is None
    assert coefficient_of_variation([5.0]) is None


def test_step_detected_only_when_beyond_noise_and_threshold():
    rng = np.random.default_rng(7)
    quiet = list(20.0 * np.exp(rng.normal(0, 0.02, 10)))
    assert detect_step(quiet, 10) is None
    stepped = quiet[:7] + [1.15 * v for v in quiet[7:]]
    step = detect_step(stepped, 10)
    assert step is not None and step.index == 7 and step.ratio == pytest.approx(1.15, rel=0.05)
    assert detect_step(quiet[:7] + [1.05 * v for v in quiet[7:]], 10) is None, "under threshold"
    noisy = list(20.0 * np.exp(rng.normal(0, 0.15, 10)))
    assert detect_step(noisy, 10) is None, "a night-to-night spread of 15% hides a 10% step"
    assert detect_step([20.0, 20.0, 30.0], 10) is None, "too short a history"


def test_rounds_put_the_drift_between_rounds_into_the_interval():
    # Three rounds, each tight, timed at moments where the ratio drifted by ±6%: resampling
    # pairs alone gives a CI a few tenths of a percent wide that misses two of the rounds;
    # resampling rounds first covers them.
    rng = np.random.default_rng(7)
    levels = (0.94, 1.0, 1.06)
    ratios = np.concatenate([lv * (1 + 0.005 * rng.standard_normal(20)) for lv in levels])
    rounds = [k for k in range(3) for _ in range(20)]
    ones = np.ones(ratios.size)
    flat = paired_ratio_ci(ratios, ones)
    grouped = paired_ratio_ci(ratios, ones, rounds=rounds)
    assert flat.high - flat.low < 0.02
    assert grouped.low < 0.96 and grouped.high > 1.04
    assert grouped == paired_ratio_ci(ratios, ones, rounds=rounds)  # seeded
    assert paired_ratio_ci(ratios, ones, rounds=[0] * ratios.size) == flat  # one round: pairs
    with pytest.raises(ValueError):
        paired_ratio_ci(ratios, ones, rounds=[0, 1])


def test_a_run_to_run_shift_inside_the_rounds_spread_is_not_flagged_a_real_one_is():
    rng = np.random.default_rng(8)

    def run(center: float, drift: tuple[float, ...]) -> tuple[np.ndarray, list[int]]:
        values = np.concatenate([center * d * (1 + 0.01 * rng.standard_normal(15)) for d in drift])
        return values, [k for k in range(len(drift)) for _ in range(15)]

    old, old_rounds = run(1.0, (0.95, 1.0, 1.04))
    same, same_rounds = run(1.0, (1.10, 1.15, 1.19))  # unchanged code, a slower stretch of the VM
    assert latency_change(old, same, 10).regression  # pairs alone: flagged
    assert not latency_change(old, same, 10, old_rounds, same_rounds).regression
    slower, slower_rounds = run(1.35, (0.97, 1.0, 1.03))
    assert latency_change(old, slower, 10, old_rounds, slower_rounds).regression


def test_wilson_interval_of_known_proportions():
    lo, hi = proportion_ci(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = proportion_ci(52, 62)  # a real MobileNetV2's ort_int8 top-1 agreement, 0.839
    assert lo == pytest.approx(0.7270, abs=1e-3) and hi == pytest.approx(0.9099, abs=1e-3)
    assert proportion_ci(0, 20)[0] == 0.0 and proportion_ci(0, 20)[1] > 0.1  # never empty
    assert proportion_ci(20, 20)[1] == 1.0 and proportion_ci(20, 20)[0] < 0.9
    assert proportion_ci(3, 0) is None
