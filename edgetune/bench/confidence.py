"""How sure a retention figure is: a paired bootstrap interval over the held-out examples.

Retention is mean(target scores) / mean(reference scores) over the same examples. Both models
answer the same prompts, so the scores are paired: resampling examples (not each model's scores
on their own) keeps an example's two scores together, and examples both models answer alike add
no width. On 90 examples one field of one example moves the demo's retention by 0.3%, so an
interval is what says whether a gate's verdict is the model or the sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESAMPLES = 10_000
SEED = 0  # fixed: the same scores give the same interval in every report


def _paired(first: Sequence[float], second: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"paired scores differ in length: {a.size} and {b.size}")
    return a, b


def _resampled_sums(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each array's sum over the same RESAMPLES draws of example indices (with replacement)."""
    picks = np.random.default_rng(SEED).integers(0, first.size, size=(RESAMPLES, first.size))
    return first[picks].sum(1), second[picks].sum(1)


def _central(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def retention_interval(
    reference: Sequence[float], target: Sequence[float], level: float = 0.95
) -> tuple[float, float] | None:
    """The central `level` percentile interval of the bootstrapped retention; None where retention
    is undefined (no examples, or the reference scores 0) or resamples often leave it undefined."""
    ref, tgt = _paired(reference, target)
    if ref.size == 0 or ref.sum() == 0:
        return None
    ref_sums, tgt_sums = _resampled_sums(ref, tgt)
    defined = ref_sums > 0
    if defined.mean() < 0.99:  # the reference scores on so few examples that its mean is often 0
        return None
    return _central(tgt_sums[defined] / ref_sums[defined], level)


def difference_interval(
    first: Sequence[float], second: Sequence[float], level: float = 0.95
) -> tuple[float, float] | None:
    """The central `level` interval of mean(first) - mean(second) over paired examples; None
    without examples. Whether fine-tuning beat prompting is this interval lying above 0."""
    a, b = _paired(first, second)
    if a.size == 0:
        return None
    sums_a, sums_b = _resampled_sums(a, b)
    return _central((sums_a - sums_b) / a.size, level)
