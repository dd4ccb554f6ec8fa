"""How sure a retention figure is: a paired bootstrap interval over the held-out examples.

Retention is mean(target scores) / mean(reference scores) over the same examples. Both models
answer the same prompts, so the scores are paired: resampling examples (not each model's scores
on their own) keeps an example's two scores together, so the spread between easy and hard
examples, which both models share, does not widen the interval. On 90 examples one field of one example moves the demo's retention by 0.3%, so an
interval is what says whether a gate's verdict is the model or the sample.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

RESAMPLES = 10_000
SEED = 0  # fixed: the same scores give the same interval in every report
# Below this many examples a percentile bootstrap has too few distinct resamples to say anything
# (one example resamples to itself: a zero-width interval that would "prove" any gate): no interval.
MIN_EXAMPLES = 10


def _paired(first: Sequence[float], second: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"paired scores differ in length: {a.size} and {b.size}")
    return a, b


def _resampled_sums(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each array's sum over the same RESAMPLES draws of example indices (with replacement)."""
    picks = np.random.default_rng(SEED).integers(0, arrays[0].size, size=(RESAMPLES, arrays[0].size))
    return tuple(a[picks].sum(1) for a in arrays)


def _central(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def retention_interval(
    reference: Sequence[float], target: Sequence[float], level: float = 0.95
) -> tuple[float, float] | None:
    """The central `level` percentile interval of the bootstrapped retention; None where retention
    is undefined (the reference scores 0) or resamples often leave it undefined, and with fewer than
    MIN_EXAMPLES. Its lower end is never above what a flawless sample of its size could show."""
    ref, tgt = _paired(reference, target)
    if ref.size < MIN_EXAMPLES or ref.sum() == 0:
        return None
    ref_sums, tgt_sums = _resampled_sums(ref, tgt)
    defined = ref_sums > 0
    if defined.mean() < 0.99:  # the reference scores on so few examples that its mean is often 0
        return None
    low, high = _central(tgt_sums[defined] / ref_sums[defined], level)
    # n examples cannot show differences rarer than 3/n (the rule of three): no sample proves more
    # than a flawless one could, 1 - 3/n in the reference's units, whatever its resamples say (a
    # flawless one resamples to 1.0 every time; one worse on an example would prove more still)
    return min(low, max(0.0, 1.0 - 3.0 / ref.size / ref.mean())), high


def difference_interval(
    first: Sequence[float], second: Sequence[float], level: float = 0.95
) -> tuple[float, float] | None:
    """The central `level` interval of mean(first) - mean(second) over paired examples; None
    with fewer than MIN_EXAMPLES. Whether fine-tuning beat prompting is this interval lying above 0."""
    a, b = _paired(first, second)
    if a.size < MIN_EXAMPLES:
        return None
    sums_a, sums_b = _resampled_sums(a, b)
    return _central((sums_a - sums_b) / a.size, level)


def sign_test_p(first: Sequence[float], second: Sequence[float]) -> float:
    """Two-sided exact sign test of paired scores: were neither better, the chance that the examples
    where they differ split at least this unevenly (ties left out). A percentile bootstrap over a
    few differing examples overstates: 4 of 90 worse and none better kept 0 out of its interval,
    where this test gives p = 0.125 (it takes 6 of 6 for p < 0.05)."""
    up, down = _signs(first, second)
    if up + down == 0:
        return 1.0
    tail = sum(math.comb(up + down, i) for i in range(min(up, down) + 1)) / 2 ** (up + down)
    return min(1.0, 2 * tail)


def _signs(first: Sequence[float], second: Sequence[float]) -> tuple[int, int]:
    """(examples where first is higher, examples where second is)."""
    a, b = _paired(first, second)
    return int((a > b).sum()), int((a < b).sum())


def beyond_noise(
    first: Sequence[float], second: Sequence[float], interval: tuple[float, float] | None, level: float
) -> bool:
    """Whether paired scores differ beyond the sample's noise: the interval of their difference
    (difference_interval's) leaves out 0, and the sign test agrees at the same level and in the
    same direction (with continuous scores most examples can move one way while the mean moves the
    other: a few large losses against many small gains)."""
    if interval is None or interval[0] <= 0 <= interval[1]:
        return False
    up, down = _signs(first, second)
    return (up > down) == (interval[0] > 0) and sign_test_p(first, second) < 1 - level


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """The central `level` bootstrap interval of mean(values); None with fewer than MIN_EXAMPLES. For a measure
    that is already a comparison per example, like the KL of a target against the reference."""
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or a.size < MIN_EXAMPLES:
        return None
    (sums,) = _resampled_sums(a)
    return _central(sums / a.size, level)


def attach_intervals(report: dict[str, Any], level: float) -> None:
    """Every interval of a bench report, from its stored per-example scores: each target's
    retention interval against the reference and the interval of its mean KL, each prompting baseline's gain with its interval, and
    whether every gain clears 0. Reports without scores (benched by older versions) keep theirs."""
    name = report["reference"]["name"]
    reference = next((t for t in report["targets"] if t["name"] == name), None)
    if reference is None:
        raise ValueError(f"the reference {name!r} is not among the report's targets")
    if "scores" not in reference:
        return
    for target in report["targets"]:
        if target is reference and target.get("retention") is not None:  # 100% by definition
            # (on too few examples no figure gets an interval, the reference's neither)
            enough = len(target["scores"]) >= MIN_EXAMPLES
            target["retention_interval"] = [1.0, 1.0] if enough else None
            target["retention_confidence"] = level
        elif target.get("retention") is not None and "scores" in target:
            interval = retention_interval(reference["scores"], target["scores"], level)
            target["retention_interval"] = list(interval) if interval else None
            target["retention_confidence"] = level
        if target.get("kl_scores"):
            interval = mean_interval(target["kl_scores"], level)
            target["kl_interval"] = list(interval) if interval else None
            target["kl_confidence"] = level
    baselines = report.get("baselines") or {}
    for b in baselines.values():
        if "scores" in b:  # paired with the tuned model's first answers (the baselines' examples)
            b["tuned_minus_baseline"] = _gain(reference["scores"][: b["examples"]], b["scores"], level)
    no_verdict = "tuning_beats_prompting" in report and report["tuning_beats_prompting"] is None  # text rows
    if baselines and not no_verdict and all("tuned_minus_baseline" in b for b in baselines.values()):
        report["tuning_beats_prompting_shown"] = all(
            b["tuned_minus_baseline"]["shown"] for b in baselines.values()
        )
        gains = [b["tuned_minus_baseline"] for b in baselines.values()]
        # None where a gain has no interval (too few examples): nothing says whether it is noise
        report["prompting_beats_tuning_shown"] = (
            any(g.get("loss_shown") for g in gains) if all(g.get("interval") for g in gains) else None
        )


def _gain(tuned: Sequence[float], baseline: Sequence[float], level: float) -> dict[str, Any]:
    """The tuned model's mean gain over a baseline on the same examples, with its paired interval."""
    interval = difference_interval(tuned, baseline, level)
    return {
        "mean": float(statistics.mean(tuned)) - float(statistics.mean(baseline)) if len(tuned) else None,
        "interval": list(interval) if interval else None,
        "confidence": level,
        "sign_test_p": sign_test_p(tuned, baseline),
        # the gain is shown: its interval lies above 0 and the sign test agrees; the loss is
        # shown: the same, below 0 (the prompt does better beyond this sample's noise)
        "shown": beyond_noise(tuned, baseline, interval, level) and interval[0] > 0,
        "loss_shown": beyond_noise(tuned, baseline, interval, level) and interval[1] < 0,
    }
