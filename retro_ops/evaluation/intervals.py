"""Paired bootstrap intervals for differences in bits per byte over the same evaluated chunks.

Two settings scored on the same chunks differ by (sum nll_a - sum nll_b) / (ln 2 * sum bytes);
resampling chunks (with replacement, seeded) and recomputing that ratio gives the interval.
Pairing removes the variance both share (which chunks are hard), which is most of it: an
unpaired interval on two ~1.6 bpb numbers would hide a 0.01 gap. The resampling unit is the
document when `clusters` are given (chunks of one chapter are correlated: resampling chunks
understates the spread), else the chunk; the interval says which (`unit`). Either covers which
text was scored for one trained pair only: `seed_interval` covers retraining (a t interval over
seeds, each a paired difference).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    difference: float  # bpb of a minus bpb of b (negative: a is better)
    low: float
    high: float
    chunks: int
    level: float = 0.95
    unit: str = "chunks"  # what was resampled: "chunks", "documents" or "seeds"
    units: int = 0  # how many of them

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict:
        return asdict(self)


def paired_bootstrap(nll_a: np.ndarray, nll_b: np.ndarray, n_bytes: np.ndarray, *,
                     clusters: np.ndarray | None = None, resamples: int = 2000, level: float = 0.95,
                     seed: int = 0, block: int = 250) -> Interval:
    """Percentile interval of bpb(a) - bpb(b); nll in nats, per chunk, aligned. `clusters` (one
    label per chunk, e.g. its document) makes the cluster the resampling unit."""
    nll_a, nll_b = np.asarray(nll_a, np.float64), np.asarray(nll_b, np.float64)
    n_bytes = np.asarray(n_bytes, np.float64)
    if not (nll_a.shape == nll_b.shape == n_bytes.shape) or nll_a.ndim != 1:
        raise ValueError(f"per-chunk arrays must be aligned, got {nll_a.shape}, {nll_b.shape}, "
                         f"{n_bytes.shape}")
    if len(n_bytes) == 0 or n_bytes.sum() <= 0:
        raise ValueError("no evaluated bytes to compare")
    delta = (nll_a - nll_b) / math.log(2)
    point = float(delta.sum() / n_bytes.sum())
    chunks, unit = len(delta), "chunks"
    if clusters is not None:
        labels, which = np.unique(np.asarray(clusters), return_inverse=True)
        if len(which) != len(delta):
            raise ValueError(f"{len(which)} cluster labels for {len(delta)} chunks")
        delta = np.bincount(which, weights=delta, minlength=len(labels))  # per cluster sums
        n_bytes = np.bincount(which, weights=n_bytes, minlength=len(labels))
        unit = "documents"
    rng = np.random.default_rng(seed)
    draws = []
    for lo in range(0, resamples, block):
        pick = rng.integers(0, len(delta), size=(min(block, resamples - lo), len(delta)))
        total = n_bytes[pick].sum(axis=1)
        draws.append(np.where(total > 0, delta[pick].sum(axis=1) / np.maximum(total, 1e-12), 0.0))
    stats = np.concatenate(draws)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    # a resampled ratio of equal sums is exactly 0; keep the point inside despite float rounding
    return Interval(point, float(min(low, point)), float(max(high, point)), chunks, level, unit,
                    len(delta))


def seed_interval(differences: list[float], level: float = 0.95) -> Interval:
    """Student-t interval of the mean of per-seed paired differences: what survives retraining.
    Needs two seeds at least; `chunks` is 0 (the unit is the seed)."""
    from scipy.stats import t

    values = np.asarray(differences, np.float64)
    if len(values) < 2:
        raise ValueError(f"a seed-level interval needs at least 2 seeds, got {len(values)}")
    mean, sem = float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))
    half = float(t.ppf(0.5 + level / 2, len(values) - 1)) * sem
    return Interval(mean, mean - half, mean + half, 0, level, "seeds", len(values))


def mean_and_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation across seeds (spread 0 for a single value)."""
    arr = np.asarray(values, np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
