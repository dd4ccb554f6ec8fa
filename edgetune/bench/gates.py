"""Gates: the recipe's thresholds applied to every exported target of a bench report."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgetune.bench.settings import GatesConfig
from edgetune.errors import GateFailed

EXPORTED = ("onnx", "gguf")


def attach_export_parity(
    report: dict[str, Any], manifest: dict[str, Any], run_dir: Path | None = None
) -> None:
    """Each exported target's parity verdict from the run's manifest, as it stands now (an
    `export --check` since the bench counts): a file that failed its check against the merged model,
    was never checked, or (given `run_dir`) changed since, fails the gates however it scored."""
    from edgetune.export.parity_record import checked_digest, parity_problem
    from edgetune.models import has_tokenizer_files

    for target in report["targets"]:
        if target.get("format") in EXPORTED:
            path = run_path(target, run_dir)
            measured = target.get("sha256")  # what bench measured (reports before 2026-12-06: unknown)
            if path is not None and not path.exists():
                problem = "the file is no longer in the run (export it again and bench)"
            elif path is not None and path.is_dir() and not has_tokenizer_files(path):
                # said as what it is, before the parity digests of its files say "changed"
                problem = "the folder has lost its tokenizer files (export it again)"
            else:  # unverified first (export --check), then verified but not what was measured
                problem = parity_problem(manifest, target["format"], target["quant"], path)
            if (
                not problem
                and path is not None
                and isinstance(measured, str)
                and checked_digest(path) != measured
            ):
                problem = "the file changed since bench measured it (bench again)"
            target["export_parity_problem"] = problem


def run_path(target: dict[str, Any], run_dir: Path | None) -> Path | None:
    """An exported target's file (or ONNX folder) as it is in the run now: the report's path is
    where it was benched, which a run set aside to .previous, or a project moved, no longer is."""
    name = Path(target["path"]).name if target.get("path") else None
    return run_dir / "export" / target["format"] / name if run_dir and name else None


def gate_failures(
    target: dict[str, Any], gates: GatesConfig, reference_scored_zero: bool = False
) -> list[str]:
    """Why `target` (a report.json target) fails the gates; empty when it passes.
    `reference_scored_zero`: the tuned model itself scored 0, so no file had anything to retain."""
    failures = (
        [f"export parity: {target['export_parity_problem']}"] if target.get("export_parity_problem") else []
    )
    minimum = minimum_retention(target, gates.min_retention)
    if minimum is not None:
        failure = retention_failure(target, minimum, gates, reference_scored_zero)
        if failure:
            failures.append(failure)
    if gates.max_kl is not None:
        failure = kl_failure(target, gates)
        if failure:
            failures.append(failure)
    rate = target.get("decode_tok_s")
    if gates.min_decode_tok_s is not None:
        if rate is None:
            failures.append("decode speed not measured")
        elif rate < gates.min_decode_tok_s:
            failures.append(f"decode {rate:.1f} tok/s < {gates.min_decode_tok_s:g}")
    size_mb = target["size_bytes"] / 1e6
    if gates.max_size_mb is not None and size_mb > gates.max_size_mb:
        failures.append(f"size {megabytes(target['size_bytes'])} > {gates.max_size_mb:g} MB")
    if gates.min_metric is not None:
        score = (target.get("task_metric") or {}).get("value")
        if score is None:
            failures.append("task score unknown")
        elif score < gates.min_metric - 1e-9:
            failures.append(
                f"{target['task_metric'].get('name', 'task score')} {score:.3f} < {gates.min_metric:g}"
            )
    return failures


def model_failures(report: dict[str, Any], gates: GatesConfig) -> list[str]:
    """Why the tuned model itself fails the gates (every file exported from it fails with it): it
    loses to prompting its base, or forgot what the base knew."""
    failures = []
    if gates.beats_prompting and (lost := prompting_failure(report, gates.prompting_evidence)):
        failures.append(lost)
    if gates.max_perplexity_ratio is not None:
        forgetting = report.get("forgetting") or {}
        ratio = forgetting.get("ppl_ratio")
        if ratio is None:
            failures.append("forgetting not measured (no forgetting probe in the report)")
        elif ratio > gates.max_perplexity_ratio:
            failures.append(
                f"forgetting: general perplexity {ratio:.2f}x the base's > {gates.max_perplexity_ratio:g}x"
            )
    return failures


def megabytes(size_bytes: float) -> str:
    """A size in MB, whole from 10 MB up, two significant digits below (a tiny file is not "0 MB")."""
    mb = size_bytes / 1e6
    return f"{mb:,.0f} MB" if mb >= 10 else f"{mb:.2g} MB"


def minimum_retention(target: dict[str, Any], min_retention: dict[str, float]) -> float | None:
    """bench.gates.min_retention's minimum for the target's quant (its own key, else "*"), or None."""
    by_quant = {quant.lower(): minimum for quant, minimum in min_retention.items()}
    return by_quant.get(target["quant"].lower(), by_quant.get("*"))


def below(retention: float, minimum: float) -> bool:
    """retention < minimum beyond float rounding: 693/700 of the merged model's metric is 99%, which
    the division gives as 0.98999999999999999 (a gate of 99% failed a target that kept exactly 99%)."""
    return retention < minimum - 1e-9


def _percent(value: float) -> str:
    return f"{value:.1%}".replace(".0%", "%")


def _too_few(scores: list | None) -> str | None:
    """Why per-example scores give no interval when there are too few of them; None otherwise."""
    from edgetune.bench.confidence import MIN_EXAMPLES

    if scores and len(scores) < MIN_EXAMPLES:
        return f"only {len(scores)} examples; an interval needs {MIN_EXAMPLES}"
    return None


RETAINED_NOTHING = (
    "retention unknown: the tuned model itself scores 0 on the task, so no file can keep any of it "
    "(its answers are in report.md)"
)


def prompting_failure(report: dict[str, Any], evidence: str) -> str | None:
    """Why the tuned model fails gates.beats_prompting under gates.prompting_evidence; None when it
    passes."""
    from edgetune.bench.confidence import MIN_EXAMPLES

    verdict = report.get("tuning_beats_prompting")
    if verdict is None:
        return (
            "fine-tuning against prompting: no verdict (no prompting baseline in the report, or "
            "held-out rows with no answer to compare)"
        )
    best = max((report.get("baselines") or {}).items(), key=lambda kv: kv[1]["task_metric"]["value"] or 0.0)
    scores = (
        f"{best[0].replace('_', ' ')} scores {best[1]['task_metric']['value'] or 0.0:.3f} against "
        f"{best[1].get('tuned_on_these') or 0.0:.3f}"
    )
    gains = [b.get("tuned_minus_baseline") or {} for b in (report.get("baselines") or {}).values()]
    intervals = bool(gains) and all(g.get("interval") for g in gains)  # too few examples: none
    if evidence == "proven":
        if not intervals:  # fewer examples than an interval needs, or a report without per-example scores
            return (
                f"fine-tuning against prompting: no confidence interval for gates.prompting_evidence "
                f"({scores} on {best[1].get('examples', '?')} examples; an interval needs {MIN_EXAMPLES} "
                "with per-example scores)"
            )
        return (
            None
            if all(g.get("shown") for g in gains)
            else f"the tuned model is not shown to beat prompting its base ({scores})"
        )
    if verdict:
        return None
    noise = evidence == "significant" and intervals  # else the point figure decides
    if noise and not any(g.get("loss_shown") for g in gains):
        return None  # a prompt does better within the sample's noise
    return f"the tuned model does not beat prompting its base{' beyond noise' * noise} ({scores})"


def retention_failure(
    target: dict[str, Any], minimum: float, gates: GatesConfig, reference_scored_zero: bool = False
) -> str | None:
    """Why the target's retention misses `minimum` under gates.retention_evidence; None when it passes."""
    retention = target.get("retention")
    if retention is None:
        return (
            RETAINED_NOTHING
            if reference_scored_zero
            else "retention unknown (no task metric, or the reference scored 0)"
        )
    interval = target.get("retention_interval")
    want = _percent(minimum)
    if gates.retention_evidence == "measured":
        if not below(retention, minimum):
            return None
        if interval is None:
            return f"retention {retention:.1%} < {want}"
        return f"retention {retention:.1%} < {want} ({interval_text(target)})"
    if interval is None:
        few = _too_few(target.get("scores"))
        why = (
            "the report has no per-example scores (benched before edgetune kept them): run `edgetune bench`"
            if "scores" not in target
            else few or "the reference scores 0 on too many resamples"
        )
        if "scores" in target and gates.retention_evidence == "significant":
            # no interval to read the noise from (too few examples, a reference that rarely
            # scores): "fail only beyond noise" falls back to the point figure
            return None if not below(retention, minimum) else f"retention {retention:.1%} < {want} ({why})"
        return f"retention {retention:.1%}: no confidence interval for gates.retention_evidence ({why})"
    low, high = interval
    if gates.retention_evidence == "significant" and below(high, minimum):
        return f"retention {retention:.1%} < {want} beyond noise ({interval_text(target)})"
    if gates.retention_evidence == "proven" and below(low, minimum):
        return f"retention {retention:.1%} not proven >= {want} ({interval_text(target)})"
    return None


def kl_failure(target: dict[str, Any], gates: GatesConfig) -> str | None:
    """Why the target's mean KL exceeds gates.max_kl under gates.kl_evidence; None when it passes."""
    kl, limit = target.get("kld_mean"), gates.max_kl
    if kl is None:
        return "KL not measured (bench.kl_examples is 0?)"
    if not math.isfinite(kl):  # every comparison with NaN is false: it would pass the readings below
        return f"KL {kl} (not finite: the target's distributions overflow)"
    interval = target.get("kl_interval")
    if gates.kl_evidence == "measured":
        if kl <= limit:
            return None
        return f"KL {kl:.3g} > {limit:g}" + (f" ({kl_interval_text(target)})" if interval else "")
    if interval is None:
        few = _too_few(target.get("kl_scores"))
        if few and gates.kl_evidence == "significant":
            return None if kl <= limit else f"KL {kl:.3g} > {limit:g} ({few})"
        why = few or "the report has no per-example KL, kl_scores: run `edgetune bench`"
        return f"KL {kl:.3g}: no confidence interval for gates.kl_evidence ({why})"
    low, high = interval
    if gates.kl_evidence == "significant" and low > limit:
        return f"KL {kl:.3g} > {limit:g} beyond noise ({kl_interval_text(target)})"
    if gates.kl_evidence == "proven" and high > limit:
        return f"KL {kl:.3g} not proven <= {limit:g} ({kl_interval_text(target)})"
    return None


def kl_interval_text(target: dict[str, Any]) -> str:
    low, high = target["kl_interval"]
    return f"{target['kl_confidence']:.0%} interval {low:.3g} to {high:.3g}"


def _noise_note(
    evidence: str, passes: bool, rule: str, stat: str, op: str, limit: str, interval: str, advice: str
) -> str | None:
    """The note for a limit inside the interval: the verdict rests on the point figure (the measured
    rule), or on the benefit of the doubt (significant); `proven` already fails such a target."""
    if evidence == "measured":
        verdict = "passes" if passes else "fails"
        return f"{verdict} {rule} on {stat}, but {limit} lies inside the {interval}: {advice}"
    if evidence == "significant" and not passes:
        return f"passes although {stat} {op} {limit}: {limit} lies inside the {interval}"
    return None


def kl_noise_note(target: dict[str, Any], gates: GatesConfig) -> str | None:
    """A max_kl verdict the sample cannot back: the limit lies inside the KL interval."""
    limit, interval = gates.max_kl, target.get("kl_interval")
    if limit is None or not interval or not interval[0] <= limit < interval[1]:
        return None
    kl = target["kld_mean"]
    return _noise_note(
        gates.kl_evidence,
        kl <= limit,
        f"max_kl {limit:g}",
        f"KL {kl:.3g}",
        ">",
        f"{limit:g}",
        kl_interval_text(target),
        "more bench.kl_examples may settle it",
    )


def interval_text(target: dict[str, Any]) -> str:
    low, high = target["retention_interval"]
    return f"{target['retention_confidence']:.0%} interval {low:.1%}-{high:.1%}"


def noise_note(target: dict[str, Any], gates: GatesConfig) -> str | None:
    """A retention verdict the sample cannot back: the minimum lies inside the retention interval."""
    minimum = minimum_retention(target, gates.min_retention)
    interval = target.get("retention_interval")
    if minimum is None or not interval or not interval[0] < minimum <= interval[1]:
        return None
    retention, want = target["retention"], _percent(minimum)
    return _noise_note(
        gates.retention_evidence,
        not below(retention, minimum),
        want,
        f"retention {retention:.1%}",
        "<",
        want,
        interval_text(target),
        "more held-out examples (bench.max_examples) may settle it",
    )


def apply_gates(report: dict[str, Any], gates: GatesConfig) -> None:
    report["gate_rule"] = asdict(gates)  # the gates these verdicts are under
    of_the_model = model_failures(report, gates)
    report["model_gate_failures"] = of_the_model  # said once, though every exported file fails with them
    scored_zero = (report.get("reference") or {}).get("value") == 0
    for target in report["targets"]:
        if target["format"] not in EXPORTED:
            target["gate"], target["gate_failures"] = "reference" if target["quant"] == "fp32" else "-", []
            continue
        failures = gate_failures(target, gates, scored_zero) + of_the_model
        target["gate"], target["gate_failures"] = ("fail" if failures else "pass"), failures
        target["gate_notes"] = [n for n in (noise_note(target, gates), kl_noise_note(target, gates)) if n]


def unchecked_gates(report: dict[str, Any]) -> list[str]:
    """Gates that would pass having checked nothing: no exported target at all, or a retention
    minimum for a quant that was not benched (a q4_k_m gate on a run that exported only q8_0)."""
    exported = [t for t in report["targets"] if t.get("format") in EXPORTED]
    if not exported:
        return ["the report has no exported target to gate (run `edgetune export`, then bench again)"]
    quants = {t["quant"].lower() for t in exported}
    named = report.get("gate_rule", {}).get("min_retention", {})
    return [
        f"bench.gates.min_retention.{quant}: no {quant} target was benched"
        for quant in named
        if quant != "*" and quant.lower() not in quants
    ]


def raise_on_failed_gates(report: dict[str, Any], console=None) -> None:
    """GateFailed listing every failed or unchecked gate; a warning on `console` when the recipe
    sets no gate at all (its files pass, checked for nothing)."""
    rule = report.get("gate_rule", {})
    limits = ("max_kl", "min_decode_tok_s", "max_size_mb", "min_metric", "max_perplexity_ratio")
    if (
        console is not None
        and not rule.get("min_retention")
        and not rule.get("beats_prompting")
        and all(rule.get(k) is None for k in limits)
    ):
        console.print("[yellow]warning:[/] the recipe sets no bench.gates: the gates checked nothing")
    of_the_model = report.get("model_gate_failures") or []
    problems = list(of_the_model)  # each names what it is about: the tuned model, its forgetting
    for t in report["targets"]:
        own = [f for f in t.get("gate_failures", []) if f not in of_the_model]
        if t.get("gate") == "fail" and own:
            problems.append(f"{t['name']} ({t['device']}): {', '.join(own)}")
    problems += unchecked_gates(report)
    if problems:
        raise GateFailed("bench gates failed: " + "; ".join(problems))


def answer_gated(target: dict[str, Any], rule: dict[str, Any]) -> bool:
    """Whether a gate on what the file answers checked `target` (a retention minimum for its quant,
    max_kl or min_metric): size and speed gates alone pass a file however damaged it is."""
    return (
        rule.get("max_kl") is not None
        or rule.get("min_metric") is not None
        or minimum_retention(target, rule.get("min_retention", {})) is not None
    )


def pick(report: dict[str, Any], run_dir: Path | None = None) -> dict[str, Any]:
    """The smallest exported artifact that passes every gate, among those a gate on their answers
    checked: with no such gate the smallest file would win unchecked (often the most damaged).
    Given the report's `run_dir`, its "path" is the file in that run as it is now."""
    chosen = _smallest_passing(report)
    path = run_path(chosen, run_dir)
    return {**chosen, "path": str(path)} if path is not None else chosen


def _smallest_passing(report: dict[str, Any]) -> dict[str, Any]:
    unchecked = unchecked_gates(report)
    if unchecked:
        raise GateFailed("nothing to pick: " + "; ".join(unchecked))
    rule = report.get("gate_rule", {})
    passing = [t for t in report["targets"] if t.get("gate") == "pass"]
    if not passing:
        raise GateFailed("no exported artifact passes every gate; see the bench report")
    checked = [t for t in passing if answer_gated(t, rule)]
    failed = [t for t in report["targets"] if t.get("gate") == "fail" and answer_gated(t, rule)]
    if not checked and failed:  # the gates were there: what they checked failed them
        raise GateFailed(
            "nothing to pick: every file a gate on its answers checked failed it: "
            + "; ".join(f"{t['name']} ({t['device']}): {', '.join(t['gate_failures'])}" for t in failed)
        )
    if not checked:
        raise GateFailed(
            f"nothing to pick: no gate checked what {', '.join(t['name'] for t in passing)} answer; {SET_AN_ANSWER_GATE}"
        )
    return min(checked, key=lambda t: t["size_bytes"])


SET_AN_ANSWER_GATE = (
    'set bench.gates.min_retention (a quant, or "*" for all), bench.gates.max_kl or '
    "bench.gates.min_metric in the recipe and `edgetune run RECIPE --pick` (re-applied, not measured again), or in the run's recipe.yaml and "
    "`edgetune bench --regate --pick`"
)


def refuse_blind_pick(gates: GatesConfig) -> None:
    """--pick under gates that check no file's answers, refused before anything is measured."""
    if gates.max_kl is None and gates.min_metric is None and not gates.min_retention:
        raise GateFailed(
            f"nothing to pick: the recipe's bench.gates check no file's answers; {SET_AN_ANSWER_GATE}"
        )
