"""Gates re-applied to a run's existing bench report: a changed threshold costs seconds, not a bench."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgetune.bench.confidence import attach_intervals
from edgetune.bench.gates import apply_gates, attach_export_parity
from edgetune.bench.report import read_report, write_report
from edgetune.bench.settings import GatesConfig
from edgetune.errors import InputError
from edgetune.run_recipe import load_run_recipe
from edgetune.rundir import read_manifest, resolve_run_dir, run_lock


def regate(
    report: dict[str, Any],
    gates: GatesConfig,
    manifest: dict[str, Any] | None = None,
    run_dir: Path | None = None,
) -> bool:
    """Apply `gates` to a report's existing measurements, every interval recomputed at
    gates.confidence from the stored per-example scores, and the exports' parity verdicts read
    again from the run's `manifest` (an `export --check` since the bench counts); True when
    anything in the report changed."""
    before = json.dumps(report, sort_keys=True)
    if manifest is not None:
        attach_export_parity(report, manifest, run_dir)
    try:
        attach_intervals(report, gates.confidence)
    except ValueError as e:
        raise InputError(f"bench report: {e}") from None
    apply_gates(report, gates)
    return json.dumps(report, sort_keys=True) != before


def regate_run(
    run_dir: Path | str | None = None, gates: GatesConfig | None = None
) -> tuple[dict[str, Any], bool]:
    """(the report under `gates`, default the run's recipe's; whether a verdict changed). The
    report files are rewritten only when one did."""
    run_dir = resolve_run_dir(run_dir)
    with run_lock(run_dir, "bench"):
        path = run_dir / "bench" / "report.json"
        report = read_report(run_dir)
        if gates is None:
            gates = load_run_recipe(run_dir).bench.gates
        try:
            changed = regate(report, gates, read_manifest(run_dir), run_dir)
            if changed:
                paths = write_report(report, run_dir / "bench")
        except (KeyError, TypeError, AttributeError) as e:
            raise InputError(f"{path}: not an edgetune bench report (missing or malformed {e})") from None
        if not changed:
            paths = {k: run_dir / "bench" / f"report.{k}" for k in ("json", "md", "png")}
        report["paths"] = {k: str(v) for k, v in paths.items()}
        return report, changed
