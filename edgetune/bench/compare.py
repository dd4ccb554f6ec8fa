"""Two runs' bench reports side by side: did a change (cleaner data, another learning rate, a new
base model) move the task metric beyond the noise of the held-out sample?

Scores are paired on the held-out examples both reports answered (matched by content, through
`reference.example_ids`), so a run benched on a changed test split is compared on the examples the
two splits share. Each target present in both is compared; its change is the paired difference of
means with a bootstrap interval (bench/confidence.py), and its verdict says whether that interval
lies above 0, below it, or across it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune.bench.confidence import difference_interval
from edgetune.errors import GateFailed, InputError

BETTER, WORSE, NOISE = "better", "worse", "within noise"


@dataclass
class Change:
    target: str  # "torch/merged", "gguf/q4_k_m", ...
    device: str
    examples: int  # answered in both reports
    before: float
    after: float
    interval: tuple[float, float] | None  # of after - before, at the comparison's level
    verdict: str  # BETTER, WORSE or NOISE

    @property
    def difference(self) -> float:
        return self.after - self.before


def _indexed(report: dict[str, Any], where: str) -> dict[str, int]:
    ids = report["reference"].get("example_ids")
    if ids is None:
        raise InputError(
            f"{where}: the report has no example ids (benched before edgetune kept them): "
            f"run `edgetune bench` on it again to compare"
        )
    index: dict[str, int] = {}
    for i, example in enumerate(ids):
        index.setdefault(example, i)
    return index


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
    first, second = _indexed(before, where[0]), _indexed(after, where[1])
    shared = [example for example in second if example in first]
    if not shared:
        raise InputError(
            f"{where[0]} and {where[1]} share no held-out example: compare runs benched on the same test data"
        )
    earlier = {(t["name"], t["device"]): t for t in before["targets"] if t.get("scores")}
    changes = []
    for t in after["targets"]:
        old = earlier.get((t["name"], t["device"]))
        if old is None or not t.get("scores"):
            continue
        a = [old["scores"][first[e]] for e in shared]
        b = [t["scores"][second[e]] for e in shared]
        interval = difference_interval(b, a, level)
        verdict = (
            NOISE if interval is None else BETTER if interval[0] > 0 else WORSE if interval[1] < 0 else NOISE
        )
        changes.append(
            Change(t["name"], t["device"], len(shared), sum(a) / len(a), sum(b) / len(b), interval, verdict)
        )
    if not changes:
        raise InputError(f"{where[0]} and {where[1]} have no target with per-example scores in common")
    return changes


def compare_runs(before_dir: Path, after_dir: Path) -> tuple[list[Change], dict, dict, float]:
    """(the changes, the earlier report, the later report, the level) of two run directories' bench
    reports, at the later report's bench.gates.confidence."""
    from edgetune.bench.report import read_report

    before, after = read_report(before_dir), read_report(after_dir)
    level = after.get("gate_rule", {}).get("confidence", 0.95)
    changes = compare_reports(before, after, level, (str(before_dir), str(after_dir)))
    return changes, before, after, level


def print_changes(changes: list[Change], before: dict, after: dict, level: float, console) -> None:
    from edgetune.console import print_rows

    colour = {BETTER: "green", WORSE: "red"}
    rows = [
        [
            c.target,
            c.device,
            str(c.examples),
            f"{c.before:.3f}",
            f"{c.after:.3f}",
            f"{c.difference:+.3f}",
            "-" if c.interval is None else f"{c.interval[0]:+.3f} to {c.interval[1]:+.3f}",
            f"[{colour[c.verdict]}]{c.verdict}[/]" if c.verdict in colour else c.verdict,
        ]
        for c in changes
    ]
    metric = after["reference"]["metric"]
    title = f"{metric}: {after.get('run', 'after')} against {before.get('run', 'before')}"
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


def raise_on_worse(changes: list[Change]) -> None:
    worse = [c for c in changes if c.verdict == WORSE]
    if worse:
        raise GateFailed(
            "worse than the compared run beyond noise: "
            + "; ".join(f"{c.target} ({c.device}) {c.difference:+.3f}" for c in worse)
        )
