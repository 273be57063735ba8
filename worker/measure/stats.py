"""Statistics over raw latency samples: bootstrap CIs of ratios of medians, Mann–Whitney U,
coefficient of variation, and a step-change test over a history of runs; and the Wilson
interval of a fraction of images (top-1 agreement, top-1 accuracy).

numpy only (no scipy in the runtime). Every random draw comes from a seeded generator, so the
same samples always give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SEED = 20_260_101
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
# pyperf's rule: a run whose standard deviation exceeds 10% of its mean is unstable.
STABLE_CV = 0.10
SIGNIFICANCE = 0.01  # two-sided p-value below which a change is not noise


@dataclass(frozen=True)
class RatioCI:
    """A ratio of latencies with a percentile bootstrap CI: median(num) / median(den) for
    independent sets, median(num_i / den_i) for paired ones (`paired`)."""

    estimate: float
    low: float
    high: float
    resamples: int
    paired: bool

    def excludes(self, value: float) -> bool:
        return self.low > value or self.high < value


def _quantiles(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(draws, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def median_draws(values: np.ndarray, groups: Sequence[int] | None, rng: np.random.Generator,
                 resamples: int) -> np.ndarray:
    """Bootstrap medians of `values`. With several `groups` (the rounds a pass was timed in),
    two stages: draw rounds with replacement, then values within each drawn round, so the
    spread between rounds, which is the machine's drift over the run, widens the interval;
    otherwise values alone are resampled."""
    if groups is None or len(set(groups)) < 2:
        return np.median(values[rng.integers(0, values.size, size=(resamples, values.size))], axis=1)
    g = np.asarray(groups)
    labels = np.unique(g)
    members = [values[g == label] for label in labels]
    width = max(m.size for m in members)
    # each round's values resampled within it, padded to one width: [rounds, resamples, width]
    within = np.full((len(members), resamples, width), np.nan)
    for k, m in enumerate(members):
        within[k, :, :m.size] = m[rng.integers(0, m.size, size=(resamples, m.size))]
    chosen = rng.integers(0, len(members), size=(resamples, len(members)))
    stacked = within[chosen, np.arange(resamples)[:, None]]  # [resamples, rounds, width]
    return np.nanmedian(stacked.reshape(resamples, -1), axis=1)


def paired_ratio_ci(numerator: Sequence[float], denominator: Sequence[float],
                    seed: int = BOOTSTRAP_SEED, resamples: int = BOOTSTRAP_RESAMPLES,
                    confidence: float = CONFIDENCE,
                    rounds: Sequence[int] | None = None) -> RatioCI:
    """median(num_i / den_i) over the pairs, with a CI that resamples pair indices (and first
    the rounds they were timed in, where there were several: `median_draws`).

    Sample i of each side was taken next to the other's sample i, so a burst of load that
    slowed both cancels in their ratio: the estimate is the median of the per-pair ratios, not
    the ratio of the two sides' medians, which a burst hitting one side's samples more often
    than the other's moves (under bursty load from other processes, one run's ratio of medians
    fell 53% below the quiet runs; with the per-pair median, the next run's fell 3.5%). The
    interval reflects the noise that pairing does not cancel, not the machine's whole drift.
    """
    a = np.asarray(numerator, dtype=np.float64)
    b = np.asarray(denominator, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired samples need equal, non-zero lengths: {a.size} vs {b.size}")
    if rounds is not None and len(rounds) != a.size:
        raise ValueError(f"{len(rounds)} round labels for {a.size} pairs")
    ratios = a / b
    draws = median_draws(ratios, rounds, np.random.default_rng(seed), resamples)
    low, high = _quantiles(draws, confidence)
    return RatioCI(float(np.median(ratios)), low, high, resamples, True)


def ratio_ci(numerator: Sequence[float], denominator: Sequence[float],
             seed: int = BOOTSTRAP_SEED, resamples: int = BOOTSTRAP_RESAMPLES,
             confidence: float = CONFIDENCE, numerator_rounds: Sequence[int] | None = None,
             denominator_rounds: Sequence[int] | None = None) -> RatioCI:
    """CI of median(num)/median(den) for two independent sample sets (e.g. two runs), each
    resampled by rounds first where it was timed in several (`median_draws`)."""
    a = np.asarray(numerator, dtype=np.float64)
    b = np.asarray(denominator, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError("both sample sets must be non-empty")
    rng = np.random.default_rng(seed)
    da = median_draws(a, numerator_rounds, rng, resamples)
    db = median_draws(b, denominator_rounds, rng, resamples)
    low, high = _quantiles(da / db, confidence)
    return RatioCI(float(np.median(a) / np.median(b)), low, high, resamples, False)


def median_ci(values: Sequence[float], seed: int = BOOTSTRAP_SEED,
              resamples: int = BOOTSTRAP_RESAMPLES,
              confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(median, low, high): percentile bootstrap CI of one sample set's median."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no values")
    rng = np.random.default_rng(seed)
    draws = np.median(v[rng.integers(0, v.size, size=(resamples, v.size))], axis=1)
    low, high = _quantiles(draws, confidence)
    return float(np.median(v)), low, high


def _rank(values: np.ndarray) -> np.ndarray:
    """Average ranks (1-based), ties sharing the mean of their positions."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(values.size, dtype=np.float64)
    sorted_v = values[order]
    i = 0
    while i < values.size:
        j = i
        while j + 1 < values.size and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def proportion_ci(successes: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """95% Wilson score interval of the proportion successes / n (None for n = 0). Unlike the
    normal approximation it stays inside [0, 1] and is not empty at 0 or n successes, which is
    where a top-1 agreement on a few dozen images sits."""
    if n <= 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mann_whitney_u(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(U of x, two-sided p-value) by the normal approximation with tie and continuity
    corrections (what scipy's method="asymptotic" gives)."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    n1, n2 = a.size, b.size
    if n1 == 0 or n2 == 0:
        raise ValueError("both sample sets must be non-empty")
    both = np.concatenate([a, b])
    ranks = _rank(both)
    u1 = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2.0)
    n = n1 + n2
    _, counts = np.unique(both, return_counts=True)
    tie = float((counts ** 3 - counts).sum())
    var = n1 * n2 / 12.0 * ((n + 1) - tie / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0:
        return u1, 1.0
    mu = n1 * n2 / 2.0
    z = (abs(u1 - mu) - 0.5) / math.sqrt(var)
    p = math.erfc(max(z, 0.0) / math.sqrt(2.0))
    return u1, min(1.0, p)


def coefficient_of_variation(values: Sequence[float]) -> float | None:
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2 or v.mean() <= 0:
        return None
    return float(v.std(ddof=1) / v.mean())


def is_stable(cv: float | None) -> bool | None:
    return None if cv is None else cv <= STABLE_CV


@dataclass(frozen=True)
class Change:
    """A latency change between two sample sets: new/old ratio of medians and its verdict."""

    ratio: RatioCI
    p_value: float
    significant: bool  # the CI excludes 1 and Mann–Whitney rejects "same distribution"
    beyond_threshold: bool  # the whole CI is slower than 1 + threshold, not just the estimate

    @property
    def regression(self) -> bool:
        return self.significant and self.beyond_threshold


def latency_change(old: Sequence[float], new: Sequence[float], threshold_pct: float,
                   old_rounds: Sequence[int] | None = None,
                   new_rounds: Sequence[int] | None = None) -> Change:
    """Is `new` slower than `old` by more than the threshold, beyond the runs' own noise?

    The CI must clear the threshold, not 1: runs of unchanged code on a shared machine differ by
    a few percent more than either run's samples show (each run has its own frequency, cache
    and neighbour state), so an estimate just past +10% with a CI reaching down to +4% is that
    drift. A change is a regression when the interval says "slower by more than the threshold".
    With round labels (the paired pass's rounds), each run's median is resampled by rounds
    first, so the drift between a run's rounds widens the interval.
    """
    ci = ratio_ci(new, old, numerator_rounds=new_rounds, denominator_rounds=old_rounds)
    _, p = mann_whitney_u(new, old)
    significant = ci.low > 1.0 and p < SIGNIFICANCE
    return Change(ci, p, significant, ci.low > 1.0 + threshold_pct / 100.0)


def robust_log_spread(values: Sequence[float]) -> float:
    """1.4826 × the median absolute deviation of log(values): a standard deviation on a log
    scale that a few outlying runs do not inflate."""
    logs = np.log(np.asarray(values, dtype=np.float64))
    return float(1.4826 * np.median(np.abs(logs - np.median(logs))))


@dataclass(frozen=True)
class Step:
    """A step in a history of per-run medians: runs [index:] differ from runs [:index]."""

    index: int
    before: float  # median of the per-run medians before the step
    after: float
    noise: float  # the before segment's spread (relative): what the step must beat

    @property
    def ratio(self) -> float:
        return self.after / self.before


def detect_step(medians: Sequence[float], threshold_pct: float, min_before: int = 3,
                noise_factor: float = 3.0) -> Step | None:
    """The latest step up in a history of run medians that is larger than the threshold and
    than `noise_factor` times the run-to-run spread before it (asv's idea: fit one step, keep
    it only if it stands out).

    The split is the one minimising the squared error of two constant segments (on log
    medians); the step must reach the last run (an ongoing change, not a blip healed since).
    """
    logs = np.log(np.asarray(medians, dtype=np.float64))
    n = logs.size
    if n < min_before + 1:
        return None
    best: tuple[float, int] | None = None
    for j in range(min_before, n):
        a, b = logs[:j], logs[j:]
        sse = float(((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum())
        if best is None or sse < best[0]:
            best = (sse, j)
    assert best is not None
    j = best[1]
    before, after = logs[:j], logs[j:]
    spread = robust_log_spread(np.exp(before))  # of the quiet segment
    step = float(np.median(after) - np.median(before))
    if step <= math.log1p(threshold_pct / 100.0) or step <= noise_factor * spread:
        return None
    return Step(j, float(math.exp(np.median(before))), float(math.exp(np.median(after))),
                spread)
