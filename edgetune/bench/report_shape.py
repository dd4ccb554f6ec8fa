"""The shape of a bench report read back from disk (`bench --regate`, `bench --compare`): a file
edited by hand or written by another tool is refused naming the field, before any number from it
is used. A NaN score (which Python's JSON reader accepts) would otherwise make every comparison
with it false and turn into a verdict."""

from __future__ import annotations

import math
from typing import Any

Problem = str | None


def _text(value: Any) -> Problem:
    return None if isinstance(value, str) else "a string"


def _count(value: Any) -> Problem:
    return None if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else "a count"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _texts(value: Any) -> Problem:
    return None if isinstance(value, list) and all(isinstance(v, str) for v in value) else "a list of strings"


def _numbers(value: Any, finite: bool = True) -> Problem:
    if not isinstance(value, list) or any(
        not isinstance(v, (int, float)) or isinstance(v, bool) for v in value
    ):
        return "a list of numbers"
    bad = next((i for i, v in enumerate(value) if not _finite(v)), None) if finite else None
    return None if bad is None else f"a list of finite numbers (entry {bad} is {value[bad]!r})"


def _measurements(value: Any) -> Problem:
    """Numbers that may be non-finite: a broken export's KL overflows, and that is its measurement."""
    return _numbers(value, finite=False)


REFERENCE = {"name": (_text, True), "metric": (_text, True), "examples": (_count, True)}
REFERENCE |= {"example_ids": (_texts, False), "kl_example_ids": (_texts, False), "scores": (_numbers, False)}
TARGET = {"name": (_text, True), "device": (_text, True), "scores": (_numbers, False)}
TARGET |= {"kl_scores": (_measurements, False)}
BASELINE = {"examples": (_count, False), "scores": (_numbers, False)}


def _fields(entry: Any, where: str, spec: dict[str, tuple[Any, bool]]) -> str | None:
    if not isinstance(entry, dict):
        return f"{where} is not a mapping"
    for key, (check, required) in spec.items():
        if key not in entry:
            if required:
                return f"{where}.{key} is missing"
            continue
        problem = check(entry[key])
        if problem:
            return f"{where}.{key} is not {problem}"
    return None


def report_problem(report: Any) -> str | None:
    """The first thing wrong with a report's shape, naming the field; None when it has the shape
    that regating, printing and comparing rely on."""
    if not isinstance(report, dict):
        return "the file holds no mapping"
    if "reference" not in report:
        return "reference is missing"
    if problem := _fields(report["reference"], "reference", REFERENCE):
        return problem
    targets = report.get("targets")
    if not isinstance(targets, list):
        return "targets is missing or not a list"
    for i, target in enumerate(targets):
        if problem := _fields(target, f"targets[{i}]", TARGET):
            return problem
    baselines = report.get("baselines", {})
    if not isinstance(baselines, dict):
        return "baselines is not a mapping"
    for name, baseline in baselines.items():
        if problem := _fields(baseline, f"baselines.{name}", BASELINE):
            return problem
    return None
