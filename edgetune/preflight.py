"""What would stop `edgetune run`'s last stage, found before its first: no minutes of tuning and
export spent on a run whose bench fails at once."""

from __future__ import annotations

import json
from pathlib import Path

from edgetune.config import Recipe
from edgetune.errors import InputError
from edgetune.export.layout import recipe_exports


def require_the_stages_runtimes(recipe: Recipe, stages: list[str]) -> None:
    """The packages the export and bench stages load, named before the tune: a missing llama.cpp
    had stopped `edgetune run` after its tune and merge, 15 minutes of the demo."""
    from edgetune.errors import require
    from edgetune.export.layout import require_runtimes

    if "export" in stages or "bench" in stages:
        require_runtimes([f.lower() for f in recipe.export.formats])
    if "bench" in stages:
        require("matplotlib", "bench's report.png")


def refuse_a_bench_that_cannot_run(recipe: Recipe, run_dir: Path, gated: bool) -> None:
    """What would stop the last stage, found before the first: no minutes of tuning and export
    spent on a run whose bench fails at once, or (`gated`: its gates enforced) whose gates fail
    for a type it never exports."""
    data = recipe.data
    if not (data.test or data.valid or data.test_fraction > 0 or data.valid_fraction > 0):
        raise InputError(
            "edgetune run benches on held-out data, and the recipe holds none out: set "
            "data.test_fraction (or data.test), or run tune and export without bench"
        )
    exported = set().union(*recipe_exports(recipe).values())
    missing = [q for q in recipe.bench.gates.min_retention if q != "*" and q.lower() not in exported]
    if gated and missing:
        raise InputError(  # bench would fail the gate as unchecked, after the whole run
            f"bench.gates.min_retention.{missing[0]}: the recipe exports no {missing[0]} "
            f"(export: {', '.join(sorted(exported)) or 'nothing'}); export it, drop the gate "
            "(--set bench.gates.min_retention={} drops them all), or run with --no-gate"
        )
    gates = recipe.bench.gates
    retention_gated = gated and (gates.min_retention or gates.min_metric is not None or gates.beats_prompting)
    if recipe.bench.metric in ("json_fields", "choice") or retention_gated:  # what answers must feed
        from edgetune.bench.accuracy import refuse_unscorable
        from edgetune.data.split import make_splits

        splits = make_splits(recipe.data)  # json_fields on plain answers: after the tune, bench would fail
        held_out = splits.held_out(recipe.bench.max_examples)
        refuse_unscorable(recipe.bench.metric, held_out)
        if retention_gated and held_out and all(e.format == "text" for e in held_out):
            named = [k for k in ("min_retention", "min_metric", "beats_prompting") if getattr(gates, k)]
            raise InputError(
                f"bench.gates.{named[0]}: the held-out rows are text, with no answer to score, so the "
                "gate would fail after the whole run; gate on bench.gates.max_kl instead, or run with "
                "--no-gate"
            )
    if _benched_on(run_dir) == set(recipe.bench.devices):
        return  # benched there before (perhaps on another machine): bench itself says so if it must run again
    from edgetune.bench.targets import check_devices

    check_devices(recipe.bench.devices, "bench.devices")


def report_targets(run_dir: Path) -> list[dict] | None:
    """The targets of the run's bench report, None where it has none that can be read."""
    try:
        targets = json.loads((run_dir / "bench" / "report.json").read_text()).get("targets")
    except (OSError, ValueError, AttributeError):
        return None
    return [t for t in targets if isinstance(t, dict)] if isinstance(targets, list) else None


def _benched_on(run_dir: Path) -> set[str]:
    """The devices the run's bench report measured on (none without a readable one)."""
    return {str(t.get("device")) for t in report_targets(run_dir) or []}
