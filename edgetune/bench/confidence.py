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


def retention_interval(
    reference: Sequence[float], target: Sequence[float], level: float = 0.95
) -> tuple[float, float] | None:
    """The central `level` percentile interval of the bootstrapped retention; None where retention
    is undefined (no examples, or the reference scores 0) or resamples often leave it undefined."""
    ref, tgt = np.asarray(reference, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if ref.shape != tgt.shape:
        raise ValueError(f"paired scores differ in length: {ref.size} reference, {tgt.size} target")
    if ref.size == 0 or ref.sum() == 0:
        return None
    picks = np.random.default_rng(SEED).integers(0, ref.size, size=(RESAMPLES, ref.size))
    ref_sums, tgt_sums = ref[picks].sum(1), tgt[picks].sum(1)
    defined = ref_sums > 0
    if defined.mean() < 0.99:  # the reference scores on so few examples that its mean is often 0
        return None
    ratios = tgt_sums[defined] / ref_sums[defined]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)
