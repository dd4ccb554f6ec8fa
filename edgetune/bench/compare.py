"""Two runs' bench reports side by side: did a change (cleaner data, another learning rate, a new
base model) move the task metric beyond the noise of the held-out sample?

Scores are paired on the held-out examples both reports answered (matched by content, through
`reference.example_ids`), so a run benched on a changed test split is compared on the examples the
two splits share. Each target present in both is compared; its change is the paired difference of
means with a bootstrap interval (bench/confidence.py), and its verdict says whether the change is
beyond noise (that interval leaves out 0 and an exact sign test agrees) and which way, or that the
reports share too few examples to tell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune.bench.confidence import MIN_EXAMPLES, beyond_noise, difference_interval
from edgetune.errors import GateFailed, InputError

BETTER, WORSE, NOISE = "better", "worse", "within noise"
TOO_FEW = "too few examples"  # fewer than confidence.MIN_EXAMPLES shared: nothing to tell noise by
# a KL change this small is float rounding (an fp32 export measures about 1e-9 nats), not a change
KL_NEGLIGIBLE = 1e-4


@dataclass
class Change:
    target: str  # "torch/merged", "gguf/q4_k_m", ...
    device: str
    examples: int  # answered in both reports
    before: float
    after: float
    interval: tuple[float, float] | None  # of after - before, at the comparison's level
    verdict: str  # BETTER, WORSE, NOISE, or TOO_FEW (too few examples for an interval)

    @property
    def difference(self) -> float:
        return self.after - self.before


def _indexed(ids: list[str]) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, example in enumerate(ids):
        index.setdefault(example, i)
    return index


def _verdict(
    a: list[float],
    b: list[float],
    interval: tuple[float, float] | None,
    level: float,
    lower_is_better: bool,
    negligible: float,
) -> str:
    """Whether b is better or worse than a beyond noise: the paired interval and the sign test agree
    (confidence.beyond_noise), and the change is not below `negligible`."""
    if interval is None:
        return TOO_FEW
    if abs(sum(b) / len(b) - sum(a) / len(a)) < negligible or not beyond_noise(b, a, interval, level):
        return NOISE
    return BETTER if (interval[1] < 0) == lower_is_better else WORSE


def _paired_changes(
    before: dict[str, Any],
    after: dict[str, Any],
    key: str,
    ids: tuple[list[str], list[str]],
    level: float,
    lower_is_better: bool,
    negligible: float = 0.0,
) -> list[Change]:
    """One Change per target whose per-example `key` both reports have, paired on the two reports'
    `ids` (which example each entry of `key` is)."""
    first, second = _indexed(ids[0]), _indexed(ids[1])
    earlier = {(t["name"], t["device"]): t for t in before["targets"] if t.get(key)}
    changes = []
    for t in after["targets"]:
        old = earlier.get((t["name"], t["device"]))
        if old is None or not t.get(key):
            continue
        pairs = [
            (old[key][first[e]], t[key][i])
            for e, i in second.items()
            if e in first and first[e] < len(old[key]) and i < len(t[key])
        ]
        pairs = [
            (a, b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)
        ]  # an overflowed KL: no verdict
        if not pairs:
            continue
        a, b = [p[0] for p in pairs], [p[1] for p in pairs]
        interval = difference_interval(b, a, level)
        mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
        verdict = _verdict(a, b, interval, level, lower_is_better, negligible)
        changes.append(Change(t["name"], t["device"], len(pairs), mean_a, mean_b, interval, verdict))
    return changes


def compare_reports(
    before: dict[str, Any],
    after: dict[str, Any],
    level: float = 0.95,
    where: tuple[str, str] = ("before", "after"),
) -> list[Change]:
    """One Change per target (name and device) scored in both reports, in `after`'s order."""
    metrics = before["reference"]["metric"], after["reference"]["metric"]
    if metrics[0] != metrics[1]:
        raise InputError(
            f"{where[0]} scores {metrics[0]!r} and {where[1]} {metrics[1]!r}: compare runs benched with one bench.metric"
        )
    for report, name in zip((before, after), where):
        if report["reference"].get("example_ids") is None:
            raise InputError(
                f"{name}: the report has no example ids (benched before edgetune kept them): "
                f"run `edgetune bench` on it again to compare"
            )
    if not set(before["reference"]["example_ids"]) & set(after["reference"]["example_ids"]):
        raise InputError(
            f"{where[0]} and {where[1]} share no held-out example: compare runs benched on the same test data"
        )
    ids = before["reference"]["example_ids"], after["reference"]["example_ids"]
    changes = _paired_changes(before, after, "scores", ids, level, lower_is_better=False)
    if not changes:
        raise InputError(f"{where[0]} and {where[1]} have no target with per-example scores in common")
    return changes


def _kl_ids(report: dict[str, Any]) -> list[str]:
    """Which example each kl_scores entry is: the first cases. A report from before kl_example_ids
    tells only where every case was answered (a chat or prompt-completion split), as its example ids."""
    reference = report["reference"]
    if "kl_example_ids" in reference:
        return reference["kl_example_ids"]
    ids = reference.get("example_ids") or []
    return ids if len(ids) == reference.get("examples") else []


def compare_kl(before: dict[str, Any], after: dict[str, Any], level: float = 0.95) -> list[Change]:
    """Each exported target's KL to its own run's merged model, paired like the scores: whether
    quantisation costs one run's model more than the other's, apart from what tuning changed. Empty
    when the reports share no KL example."""
    ids = _kl_ids(before), _kl_ids(after)
    changes = _paired_changes(
        before, after, "kl_scores", ids, level, lower_is_better=True, negligible=KL_NEGLIGIBLE
    )
    return [c for c in changes if c.target != before["reference"]["name"]]


def compare_runs(before_dir: Path, after_dir: Path) -> tuple[list[Change], list[Change], dict, dict, float]:
    """(the score changes, the KL changes, the earlier report, the later report, the level) of two
    run directories' bench reports, at the later report's bench.gates.confidence."""
    from edgetune.bench.report import read_report

    before, after = read_report(before_dir), read_report(after_dir)
    level = after.get("gate_rule", {}).get("confidence", 0.95)
    changes = compare_reports(before, after, level, (str(before_dir), str(after_dir)))
    return changes, compare_kl(before, after, level), before, after, level


def print_changes(changes: list[Change], title: str, level: float, console, digits: str = ".3f") -> None:
    from edgetune.console import print_rows

    colour = {BETTER: "green", WORSE: "red", TOO_FEW: "yellow"}

    def signed(x: float) -> str:
        return format(x, "+" + digits)

    rows = [
        [
            c.target,
            c.device,
            str(c.examples),
            format(c.before, digits),
            format(c.after, digits),
            signed(c.difference),
            "-" if c.interval is None else f"{signed(c.interval[0])} to {signed(c.interval[1])}",
            f"[{colour[c.verdict]}]{c.verdict}[/]" if c.verdict in colour else c.verdict,
        ]
        for c in changes
    ]
    headers = [
        "target",
        "device",
        "examples",
        "before",
        "after",
        "change",
        f"{level:.0%} interval",
        "verdict",
    ]
    print_rows(console, title, headers, rows, left=("device", "verdict"))


def print_comparison(
    changes: list[Change], kl: list[Change], before: dict, after: dict, level: float, console
) -> None:
    runs = f"{after.get('run', 'after')} against {before.get('run', 'before')}"
    print_changes(changes, f"{after['reference']['metric']}: {runs}", level, console)
    if kl:
        title = f"KL to its run's merged model, lower is better (not gated): {runs}"
        print_changes(kl, title, level, console, ".3g")


def raise_on_worse(changes: list[Change]) -> None:
    """--gate: a target worse beyond noise fails, and so does a comparison on too few shared examples
    to tell (a gate never passes having checked nothing: 9 of 9 examples lost had passed)."""
    few = [c for c in changes if c.verdict == TOO_FEW]
    if few:
        raise GateFailed(
            f"the runs share {few[0].examples} scored examples, fewer than the {MIN_EXAMPLES} a verdict "
            "needs: bench both on more of the same test data to compare them"
        )
    worse = [c for c in changes if c.verdict == WORSE]
    if worse:
        raise GateFailed(
            "worse than the compared run beyond noise: "
            + "; ".join(f"{c.target} ({c.device}) {c.difference:+.3f}" for c in worse)
        )
