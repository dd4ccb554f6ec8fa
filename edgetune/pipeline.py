"""`edgetune run RECIPE`: data check, tune, merge, export and bench in one run directory, each stage
skipped when the inputs it was last run on are unchanged.

Each stage's fingerprint (edgetune/fingerprints.py) is recorded in manifest.json under "pipeline"
only after the stage finishes, so an interrupted stage runs again (tune resumes from its last
committed checkpoint).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape

from edgetune.config import Recipe, load_recipe, override_list
from edgetune.errors import InputError, Interrupted
from edgetune.export.layout import recipe_exports
from edgetune.export.recorded import covers, drop_unrequested, export_whole, made_earlier, unrequested
from edgetune.fingerprints import STAGES, StageRecord, export_files
from edgetune.pathnames import beside
from edgetune.recipe_yaml import unnamed_run_dir
from edgetune.run_recipe import dump_run_recipe
from edgetune.rundir import (
    RECIPE_FILE,
    RUNS_DIR,
    atomic_write_text,
    is_run_dir,
    point_latest,
    read_manifest,
    refuse_foreign_dir,
    remove_paths,
    run_lock,
    update_manifest,
)
from edgetune.validate import damage


@dataclass
class PipelineResult:
    run_dir: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    report: dict[str, Any] | None = None
    wall_s: float = 0.0
    # exported files that failed their parity check or were never checked (the bench gates fail
    # them too; a run --until export has only this)
    export_problems: list[str] = field(default_factory=list)
    warned: list[str] = field(default_factory=list)  # printed by a stage: a later one does not repeat them


def _outputs_present(stage: str, run_dir: Path) -> bool:
    """Whether the stage's outputs are there (the export's whole: it hashes them, so only asked of it)."""
    if stage == "export":  # an export stopped before its parity checks is not a finished one
        return bool(export_files(run_dir)) and export_whole(run_dir)
    return {
        "data": True,
        "tune": (run_dir / "adapter").is_dir(),
        # a merged model damaged since (a weights file truncated) is merged again, not exported from
        "merge": (run_dir / "merged" / "config.json").is_file() and damage(run_dir / "merged") is None,
        "bench": (run_dir / "bench" / "report.json").is_file(),
    }[stage]


def _tuned_alone(recipe: Recipe, run_dir: Path, record: StageRecord) -> bool:
    """A tune that `edgetune tune` (not this pipeline) finished in the run directory on the
    recipe's inputs: its settings, its data files' bytes and its base model as its manifest
    recorded them. Retraining it would take the time it took for the same adapter."""
    from edgetune.tune.resume import finished_tune

    if "tune" in record.done or "tune_started" in record.done or finished_tune(run_dir) is None:
        return False
    return _tuned_on_these_inputs(recipe, run_dir)


def _tuned_on_these_inputs(recipe: Recipe, run_dir: Path) -> bool:
    """Whether the tune in the run directory (finished or not) recorded the recipe's inputs when it
    started: its settings, its data files' bytes and its base model."""
    from edgetune.fingerprints import data_files, local_base, training_settings
    from edgetune.rundir import sha256_tree

    manifest = read_manifest(run_dir)
    if manifest.get("recipe", {}).get("training_sha256") != training_settings(recipe):
        return False
    if manifest.get("data", {}).get("sha256") != data_files(recipe):
        return False
    base, path = manifest.get("base_model", {}), local_base(recipe)
    return (
        base.get("sha256") == sha256_tree(path) if path is not None else base.get("name") == recipe.model.base
    )


def _set_aside(run_dir: Path, console) -> None:
    """A previous run with other tune inputs moves to <run>.previous instead of being overwritten."""
    from edgetune.tune.callbacks import complete_checkpoints

    products = ("adapter", "merged", "export", "bench")
    # an empty checkpoints/ is a start that failed before its first save: nothing worth keeping
    if not any((run_dir / name).exists() for name in products) and not complete_checkpoints(
        run_dir / "checkpoints"
    ):
        return  # nothing but this run's own pipeline record yet
    previous = beside(run_dir, suffix=".previous")  # (shortened for a name near the limit)
    if previous.exists() and not is_run_dir(previous):  # only ever replace an earlier set-aside run
        raise InputError(
            f"{previous}: holds files but no edgetune run, and the previous run would be kept there; "
            "move it, or use another --run-dir"
        )
    replaced = previous.exists()
    # the one kept before goes whole: renamed out of the way (hidden) first, then removed, so that a
    # kill during the removal leaves no half run in <run>.previous (one no later run would replace)
    doomed = beside(previous, ".", ".tmp")
    remove_paths([doomed])  # a removal killed before
    if replaced:
        previous.rename(doomed)
        remove_paths([doomed])
    run_dir.rename(previous)
    if console is not None:
        console.print(
            f"tune inputs changed: the previous run is kept in {escape(str(previous))}"
            + (" (in place of the run kept there before)" if replaced else "")
        )


def run_pipeline(
    recipe_arg: str | None = None,
    overrides: list[str] | None = None,
    run_dir: Path | str | None = None,
    console=None,
    pick: bool = False,
    until: str = "bench",
    gated: bool = True,
) -> PipelineResult:
    """`pick`: the run ends in --pick, which the recipe's gates must allow before anything runs.
    `until`: the last stage to run (the later ones are left for another `edgetune run`).
    `gated`: the caller fails the run on its gates (`run --no-gate` does not)."""
    started = time.time()
    if until not in STAGES:
        raise InputError(f"--until {until}: not a stage; the stages are {', '.join(STAGES)}")
    if pick and until != "bench":
        raise InputError(f"--pick reads the bench report: it cannot end a run --until {until}")
    recipe = load_recipe(recipe_arg, override_list(overrides), new_run=True)
    if pick:
        from edgetune.bench.gates import refuse_blind_pick

        refuse_blind_pick(recipe.bench.gates)
    if run_dir is None and (unnamed := unnamed_run_dir(RUNS_DIR, recipe.source, recipe.name)):
        run_dir = unnamed
        if unnamed.name != recipe.name and console is not None:
            console.print(
                f"{escape(str(unnamed))}: this recipe's run, as an earlier edgetune named it; going on there"
            )
    run_dir = Path(run_dir or RUNS_DIR / recipe.name).resolve()  # a str too, from a program
    refuse_foreign_dir(run_dir)
    stages = STAGES[: STAGES.index(until) + 1]
    from edgetune.preflight import require_the_stages_runtimes

    require_the_stages_runtimes(recipe, stages)
    if "bench" in stages:
        from edgetune.preflight import refuse_a_bench_that_cannot_run

        refuse_a_bench_that_cannot_run(recipe, run_dir, gated or pick)
    with run_lock(run_dir, "run"):
        result = PipelineResult(run_dir)
        record = StageRecord(recipe, run_dir)

        def say(message: str) -> None:
            if console is not None:
                console.print(message)

        for stage in stages:
            if stage == "tune" and stage not in record.done and _tuned_alone(recipe, run_dir, record):
                record.record(stage)  # as if this pipeline had run it: the later stages' records follow it
                say("[dim]tune: finished by `edgetune tune` on these inputs, adopted[/]")
            # a stage with no record runs whatever is there: its outputs (an export's, GBs) go unhashed
            present = _outputs_present(stage, run_dir) and (stage != "export" or covers(run_dir, recipe))
            if stage in record.done and present and record.matches(stage):
                result.skipped.append(stage)
                say(f"[dim]{stage}: up to date, skipped[/]")
                if stage == "tune":  # what later stages and commands read: paths as they are now
                    _refresh_recipe(recipe, run_dir)
                if stage == "export" and (extra := unrequested(run_dir, recipe_exports(recipe))):
                    drop_unrequested(run_dir, recipe_exports(recipe), say)
                    if _benched(run_dir, extra):  # by a bench run by hand: the report is not the recorded one
                        record.forget_after(stage)
                for fmt in recipe_exports(recipe) if stage == "export" else ():
                    if f"export.{fmt}" not in record.done:  # a run an earlier edgetune exported
                        record.record(f"export.{fmt}")
                continue
            say(f"[bold]{stage}[/]")
            try:
                _run_stage(stage, recipe, recipe_arg, overrides, run_dir, record, console, result)
            except (KeyboardInterrupt, Interrupted):  # tune's own says `edgetune tune --resume`
                raise Interrupted(
                    f"interrupted in {stage}; the same `edgetune run` continues: the stages before it are kept"
                ) from None
            result.ran.append(stage)
            if stage != "data":  # a data check writes nothing: tune's fingerprint holds the data's own
                record.forget_after(stage)
            record.record(stage)
        record.save_if_changed()
        # a data check alone makes no run the later commands could take up (no recipe.yaml)
        if (run_dir / RECIPE_FILE).is_file() and not point_latest(run_dir):
            say(
                f"[yellow]warning:[/] {RUNS_DIR / 'latest'} does not point at this run: name it to later commands"
            )
        if "export" in stages:
            from edgetune.export.parity_record import run_export_problems

            result.export_problems = run_export_problems(run_dir)
        if "bench" in result.skipped:
            result.report = _regated_report(recipe, run_dir, say)
        result.wall_s = round(time.time() - started, 1)
        return result


def _regated_report(recipe: Recipe, run_dir: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """The skipped bench's report under this invocation's gates, rewritten when a verdict changed."""
    from edgetune.bench.regate import regate_run

    report, changed = regate_run(run_dir, recipe.bench.gates)
    if changed:  # the gates differ from the report's own (its gate_rule): so do the run recipe's
        _refresh_recipe(recipe, run_dir)
        say(
            "bench: verdicts re-applied to the report's measurements (its gates or an export's parity check changed)"
        )
    return report


def _run_stage(stage, recipe, recipe_arg, overrides, run_dir, record: StageRecord, console, result) -> None:
    if stage == "data":
        from edgetune.data.report import check_dataset, print_report

        files = {k: Path(p) if (p := getattr(recipe.data, k)) else None for k in ("train", "valid", "test")}
        report = check_dataset(recipe_arg, override_list(overrides), files)
        if console is not None:
            print_report(report, console)
            result.warned += report.get("warnings", [])
    elif stage == "tune":
        from edgetune.tune.callbacks import complete_checkpoints
        from edgetune.tune.resume import finished_tune
        from edgetune.tune.run import tune

        saved = bool(complete_checkpoints(run_dir / "checkpoints"))
        if (
            saved
            and not {"tune", "tune_started"} & set(record.done)
            and _tuned_on_these_inputs(recipe, run_dir)
        ):
            record.start_tune()  # `edgetune tune` started it on these inputs, and was stopped: it resumes
        resume = saved and record.tune_started_here()
        if resume and finished_tune(run_dir):  # it finished, then the run stopped before recording it
            return
        if resume:  # the run's recipe with this invocation's paths and settings (the same tune)
            _refresh_recipe(recipe, run_dir)
        else:
            _set_aside(run_dir, console)
            run_dir.mkdir(parents=True, exist_ok=True)
            record.start_tune()
        tune(
            None if resume else recipe_arg,
            None if resume else overrides,
            run_dir,
            resume=resume,
            console=console,
            shown=result.warned,
        )
    elif stage == "merge":
        from edgetune.merge import merge

        _refresh_recipe(recipe, run_dir)
        merge(run_dir, console=console)
    elif stage == "export":
        from edgetune.export.parity import print_table
        from edgetune.export.run import export

        _refresh_recipe(recipe, run_dir)
        wanted = recipe_exports(recipe)
        # a format whose own settings and inputs are as its files were made (only the other one's
        # changed) keeps its files: an ONNX setting does not quantise every GGUF again
        kept = [
            f
            for f in wanted
            if record.matches(f"export.{f}") and export_whole(run_dir, f) and covers(run_dir, recipe, f)
        ]
        stale = [f for f in wanted if f not in kept]
        for fmt in kept:
            if console is not None:
                console.print(f"[dim]export: {fmt} up to date, kept[/]")
        manifest = read_manifest(run_dir)
        earlier = manifest.get("stages", {}).get("export", {})
        for fmt in stale:
            if console is not None and any(
                made_earlier(e, manifest) for e in earlier.get(fmt) or [] if isinstance(e, dict)
            ):
                console.print(
                    f"export: {fmt} files made by an earlier edgetune, without what it writes in them today "
                    "(the trained system prompt): exported again"
                )
        parity = []
        for fmt in stale:  # one at a time, each recorded once done: interrupted in the next, it is kept
            parity += export(run_dir, formats=[fmt], console=console)["parity"]
            record.record(f"export.{fmt}")
        drop_unrequested(run_dir, wanted, console.print if console else None)  # after the new files are in
        if console is not None and parity:
            print_table(parity, console)
        for fmt in kept:
            record.record(f"export.{fmt}")
    elif stage == "bench":
        from edgetune.bench.run import bench

        _refresh_recipe(recipe, run_dir)
        result.report = bench(run_dir, console=console)


def _benched(run_dir: Path, paths: list[Path]) -> bool:
    """Whether the run's bench report has a target for any of `paths` (exported files or folders)."""
    from edgetune.preflight import report_targets

    targets = report_targets(run_dir)
    if targets is None:
        return True  # no report, or one that cannot be read: the bench reruns either way
    benched = {Path(str(t.get("path", ""))).name for t in targets}
    return any(p.name in benched for p in paths)


def _refresh_recipe(recipe: Recipe, run_dir: Path) -> None:
    """Later stages read the run's recipe.yaml: give them this invocation's export and bench settings
    (tune's sections are the same but for what no fingerprint holds, or tune would have run: the
    data files' paths, in a project moved since, and settings such as train.threads)."""
    text = dump_run_recipe(recipe, run_dir)
    path = run_dir / RECIPE_FILE
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)
    if read_manifest(run_dir).get("recipe", {}).get("written_in") != str(run_dir.resolve()):
        update_manifest(run_dir, recipe={"written_in": str(run_dir.resolve())})
