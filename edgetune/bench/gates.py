"""Gates: the recipe's thresholds applied to every exported target of a bench report."""

from __future__ import annotations

from typing import Any

from edgetune.config import GatesConfig
from edgetune.errors import GateFailed

EXPORTED = ("onnx", "gguf")


def gate_failures(target: dict[str, Any], gates: GatesConfig) -> list[str]:
    """Why `target` (a report.json target) fails the gates; empty when it passes."""
    failures = []
    minimum = gates.min_retention.get(target["quant"], gates.min_retention.get("*"))
    retention = target.get("retention")
    if minimum is not None:
        if retention is None:
            failures.append("retention unknown (no task metric, or the reference scored 0)")
        elif retention < minimum:
            failures.append(f"retention {retention:.1%} < {minimum:.0%}")
    kl = target.get("kld_mean")
    if gates.max_kl is not None:
        if kl is None:
            failures.append("KL not measured (bench.kl_examples is 0?)")
        elif kl > gates.max_kl:
            failures.append(f"KL {kl:.3g} > {gates.max_kl:g}")
    rate = target.get("decode_tok_s")
    if gates.min_decode_tok_s is not None:
        if rate is None:
            failures.append("decode speed not measured")
        elif rate < gates.min_decode_tok_s:
            failures.append(f"decode {rate:.1f} tok/s < {gates.min_decode_tok_s:g}")
    size_mb = target["size_bytes"] / 1e6
    if gates.max_size_mb is not None and size_mb > gates.max_size_mb:
        failures.append(f"size {size_mb:.0f} MB > {gates.max_size_mb:g} MB")
    return failures


def apply_gates(report: dict[str, Any], gates: GatesConfig) -> None:
    for target in report["targets"]:
        if target["format"] not in EXPORTED:
            target["gate"], target["gate_failures"] = "reference" if target["quant"] == "fp32" else "-", []
            continue
        failures = gate_failures(target, gates)
        target["gate"], target["gate_failures"] = ("fail" if failures else "pass"), failures


def raise_on_failed_gates(report: dict[str, Any]) -> None:
    failed = [t for t in report["targets"] if t.get("gate") == "fail"]
    if failed:
        raise GateFailed(
            "bench gates failed: "
            + "; ".join(f"{t['name']} ({t['device']}): {', '.join(t['gate_failures'])}" for t in failed)
        )


def pick(report: dict[str, Any]) -> dict[str, Any]:
    """The smallest exported artifact that passes every gate."""
    passing = [t for t in report["targets"] if t.get("gate") == "pass"]
    if not passing:
        raise GateFailed("no exported artifact passes every gate; see the bench report")
    return min(passing, key=lambda t: t["size_bytes"])
