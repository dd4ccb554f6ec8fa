"""`edgetune run RECIPE`: data check, tune, merge, export and bench in one run directory, each stage
skipped when the inputs it was last run on are unchanged.

A stage's fingerprint is a hash of exactly what it reads: tune the model (a local base by its
files' contents), the data and train sections and the data files' bytes; merge the adapter's files;
export the merged weights, the export section and the data (importance matrix, parity prompts);
bench the exported files and the bench section. Fingerprints are recorded in manifest.json under
"pipeline" only after a stage finishes, so an interrupted stage runs again (tune resumes from its
last committed checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgetune.config import Recipe, dump_recipe, load_recipe
from edgetune.errors import InputError, Interrupted
from edgetune.rundir import (
    RECIPE_FILE,
    RUNS_DIR,
    atomic_write_json,
    atomic_write_text,
    is_run_dir,
    point_latest,
    read_manifest,
    refuse_foreign_dir,
    run_lock,
    sha256_file,
    sha256_tree,
    tree_files,
)

STAGES = ("data", "tune", "merge", "export", "bench")


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


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# Recipe fields that joined a hashed section after runs had been fingerprinted, each with the value
# that does what edgetune did before the field existed. At that value a field stays out of its
# stage's hash, so upgrading edgetune does not make `edgetune run` retrain (or re-export) a run
# whose inputs did not change; at any other value it is hashed like the rest. A new field of a
# hashed section belongs here (tests/test_pipeline.py lists the fields hashed before it).
ADDED_LATER: dict[str, Any] = {}


# Settings out of every fingerprint: the data files' paths (their bytes are hashed by split, so a
# project moved or checked out elsewhere is still up to date) and settings that cannot change what a
# stage makes. Fingerprints recorded before these left (edgetune up to 2026-12-06, `legacy`) are
# still recognised, and replaced by today's when a stage is found up to date.
UNHASHED = (
    "data.train",
    "data.valid",
    "data.test",
    "model.allow_pickle",
    "train.threads",
    "train.tensorboard",
)


def hashed_settings(section: str, settings: Any, legacy: bool = False) -> dict[str, Any]:
    """A recipe section as its stage's fingerprint hashes it: every field but those of ADDED_LATER
    left at their earlier behaviour and those UNHASHED, nested sections the same way."""
    out = {}
    for key, value in (asdict(settings) if not isinstance(settings, dict) else settings).items():
        path = f"{section}.{key}"
        if path in ADDED_LATER and value == ADDED_LATER[path] or (path in UNHASHED and not legacy):
            continue
        out[key] = hashed_settings(path, value, legacy) if isinstance(value, dict) else value
    return out


def _data_fingerprint(recipe: Recipe, legacy: bool = False) -> str:
    from edgetune.data.files import dataset_kind

    paths = {k: Path(p) for k in ("train", "valid", "test") if (p := getattr(recipe.data, k))}
    for path in paths.values():
        dataset_kind(path)  # a missing file or a directory is a DataError naming it, not a hashing crash
    files = {k: sha256_file(p) for k, p in paths.items()}
    return _digest(hashed_settings("data", recipe.data, legacy), files)


def _files_fingerprint(paths: list[Path], root: Path | None) -> str:
    """Each file by its path under `root` (every ONNX variant's file is model.onnx; `legacy`
    fingerprints keyed them by name, so only the last variant's bytes counted)."""
    return _digest({str(p.relative_to(root) if root else p.name): sha256_file(p) for p in paths})


def _stat_signature(paths: list[Path]) -> str:
    return _digest([(p.name, (s := p.stat()).st_size, s.st_mtime_ns) for p in paths])


def base_identity(recipe: Recipe, done: dict[str, Any]) -> str:
    """What model.base stands for in the tune fingerprint: a built-in alias or hub id by its name
    (with model.revision beside it), a local directory by its files' contents, so an edit in place
    retrains and a moved copy does not. Hashing takes seconds a GB: the hash is kept in the
    pipeline record with the files' sizes and times, and taken again only when those change."""
    from edgetune.models import BUILTINS

    name = recipe.model.base
    path = Path(name).expanduser()
    cached = done.get("base_model") if isinstance(done.get("base_model"), dict) else {}
    if name in BUILTINS:
        return name
    if not path.is_dir():  # a hub id; or a local base removed since: it held what the record says
        return cached["sha256"] if cached.get("name") == name and cached.get("sha256") else name
    stat = _stat_signature(tree_files(path))
    if cached.get("stat") == stat and cached.get("sha256"):
        return cached["sha256"]
    digest = sha256_tree(path)
    done["base_model"] = {"name": name, "stat": stat, "sha256": digest}  # saved at the end of the run
    return digest


def _export_files(run_dir: Path) -> list[Path]:
    export = run_dir / "export"
    from edgetune.export.layout import gguf_files, onnx_dirs

    onnx = [p for d in onnx_dirs(export / "onnx") for p in sorted(d.glob("model.onnx*"))]
    return gguf_files(export / "gguf") + onnx


def fingerprints(
    recipe: Recipe, run_dir: Path, done: dict[str, Any] | None = None, legacy: bool = False
) -> dict[str, Callable[[], str]]:
    """Lazily computed, since later ones hash files earlier stages write. `done`: the run's pipeline
    record (a local base's cached hash). `legacy`: as edgetune fingerprinted before UNHASHED."""
    data = _data_fingerprint(recipe, legacy)
    tune = _tune_key(recipe, data, None if legacy else base_identity(recipe, {} if done is None else done))
    export_dir = None if legacy else run_dir / "export"
    return {
        "data": lambda: data,
        "tune": lambda: tune,
        "merge": lambda: _digest(tune, sha256_tree(run_dir / "adapter")),
        "export": lambda: _digest(
            sha256_tree(run_dir / "merged"),
            hashed_settings("export", recipe.export, legacy),
            data,
            recipe.bench.max_new_tokens,
        ),
        # gates are not measurements: a skipped bench re-applies them to its report
        "bench": lambda: _digest(
            _files_fingerprint(_export_files(run_dir), export_dir), _bench_settings(recipe, legacy)
        ),
    }


def _bench_settings(recipe: Recipe, legacy: bool = False) -> dict[str, Any]:
    settings = hashed_settings("bench", recipe.bench, legacy)
    settings.pop("gates")
    return settings


def _outputs_present(stage: str, run_dir: Path) -> bool:
    return {
        "data": True,
        "tune": (run_dir / "adapter").is_dir(),
        "merge": (run_dir / "merged" / "config.json").is_file(),
        # an export stopped before its parity checks (a manual one, interrupted) is not a finished one
        "export": bool(_export_files(run_dir))
        and read_manifest(run_dir).get("stages", {}).get("export", {}).get("status") == "done",
        "bench": (run_dir / "bench" / "report.json").is_file(),
    }[stage]


def _set_aside(run_dir: Path, console) -> None:
    """A previous run with other tune inputs moves to <run>.previous instead of being overwritten."""
    from edgetune.tune.callbacks import complete_checkpoints

    products = ("adapter", "merged", "export", "bench")
    # an empty checkpoints/ is a start that failed before its first save: nothing worth keeping
    if not any((run_dir / name).exists() for name in products) and not complete_checkpoints(
        run_dir / "checkpoints"
    ):
        return  # nothing but this run's own pipeline record yet
    previous = run_dir.with_name(run_dir.name + ".previous")
    if previous.exists() and not is_run_dir(previous):  # only ever replace an earlier set-aside run
        raise InputError(
            f"{previous}: holds files but no edgetune run, and the previous run would be kept there; "
            "move it, or use another --run-dir"
        )
    shutil.rmtree(previous, ignore_errors=True)
    run_dir.rename(previous)
    if console is not None:
        console.print(f"tune inputs changed: the previous run is kept in {previous}")


def _refuse_a_bench_that_cannot_run(recipe: Recipe, run_dir: Path) -> None:
    """What would stop the last stage, found before the first: no minutes of tuning and export
    spent on a run whose bench fails at once."""
    data = recipe.data
    if not (data.test or data.valid or data.test_fraction > 0 or data.valid_fraction > 0):
        raise InputError(
            "edgetune run benches on held-out data, and the recipe holds none out: set "
            "data.test_fraction (or data.test), or run tune and export without bench"
        )
    if (run_dir / "bench" / "report.json").is_file():
        return  # benched before (perhaps on another machine): bench itself says so if it must run again
    from edgetune.bench.run import check_devices

    check_devices(recipe.bench.devices, "bench.devices")


def run_pipeline(
    recipe_arg: str | None = None,
    overrides: list[str] | None = None,
    run_dir: Path | None = None,
    console=None,
    pick: bool = False,
    until: str = "bench",
) -> PipelineResult:
    """`pick`: the run ends in --pick, which the recipe's gates must allow before anything runs.
    `until`: the last stage to run (the later ones are left for another `edgetune run`)."""
    started = time.time()
    if until not in STAGES:
        raise InputError(f"--until {until}: not a stage; the stages are {', '.join(STAGES)}")
    if pick and until != "bench":
        raise InputError(f"--pick reads the bench report: it cannot end a run --until {until}")
    recipe = load_recipe(recipe_arg, list(overrides or []))
    if pick:
        from edgetune.bench.gates import refuse_blind_pick

        refuse_blind_pick(recipe.bench.gates)
    run_dir = (run_dir or RUNS_DIR / recipe.name).resolve()
    refuse_foreign_dir(run_dir)
    stages = STAGES[: STAGES.index(until) + 1]
    if "bench" in stages:
        _refuse_a_bench_that_cannot_run(recipe, run_dir)
    with run_lock(run_dir, "run"):
        result = PipelineResult(run_dir)
        done = read_manifest(run_dir).get("pipeline", {}) if (run_dir / "manifest.json").is_file() else {}
        as_read = json.dumps(done, sort_keys=True)
        prints = fingerprints(recipe, run_dir, done)
        legacy = fingerprints(recipe, run_dir, legacy=True)

        def say(message: str) -> None:
            if console is not None:
                console.print(message)

        def up_to_date(stage: str) -> bool:
            if stage not in done or not _outputs_present(stage, run_dir):
                return False
            if done[stage] == prints[stage]():
                return True
            if done[stage] != legacy[stage]():  # neither today's nor an earlier edgetune's
                return False
            record(stage)  # an earlier edgetune's fingerprint of the same inputs: today's from now on
            return True

        def record(stage: str) -> None:
            done[stage] = prints[stage]()
            _save(run_dir, done)

        for stage in stages:
            if up_to_date(stage):
                result.skipped.append(stage)
                say(f"[dim]{stage}: up to date, skipped[/]")
                continue
            say(f"[bold]{stage}[/]")
            try:
                tune_keys = (prints["tune"](), legacy["tune"]())
                _run_stage(stage, recipe, recipe_arg, overrides, run_dir, done, console, result, tune_keys)
            except (KeyboardInterrupt, Interrupted):  # tune's own says `edgetune tune --resume`
                raise Interrupted(
                    f"interrupted in {stage}; the same `edgetune run` continues: the stages before it are kept"
                ) from None
            result.ran.append(stage)
            # everything after a stage that ran is stale, whatever its fingerprint said
            for later in STAGES[STAGES.index(stage) + 1 :]:
                done.pop(later, None)
            record(stage)
        if json.dumps(done, sort_keys=True) != as_read and (run_dir / "manifest.json").is_file():
            _save(run_dir, done)  # a local base's hash taken again (its files' times changed)
        if not point_latest(run_dir):
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
        say("bench: the gates changed: re-applied to the report's measurements")
    return report


def _run_stage(stage, recipe, recipe_arg, overrides, run_dir, done, console, result, tune_keys) -> None:
    """`tune_keys`: the tune fingerprint, today's and an earlier edgetune's (a tune it started
    resumes too)."""
    if stage == "data":
        from edgetune.data.report import check_dataset, print_report

        files = {k: Path(p) if (p := getattr(recipe.data, k)) else None for k in ("train", "valid", "test")}
        report = check_dataset(recipe_arg, list(overrides or []), files)
        if console is not None:
            print_report(report)
    elif stage == "tune":
        from edgetune.tune.callbacks import complete_checkpoints
        from edgetune.tune.run import finished_tune, tune

        saved = bool(complete_checkpoints(run_dir / "checkpoints"))
        resume = saved and done.get("tune_started") in tune_keys
        if resume and finished_tune(run_dir):  # it finished, then the run stopped before recording it
            return
        if not resume:
            _set_aside(run_dir, console)
            run_dir.mkdir(parents=True, exist_ok=True)
            done["tune_started"] = tune_keys[0]
            _save(run_dir, done)
        tune(
            None if resume else recipe_arg,
            None if resume else overrides,
            run_dir,
            resume=resume,
            console=console,
        )
    elif stage == "merge":
        from edgetune.merge import merge

        _refresh_recipe(recipe, run_dir)
        merge(run_dir, console=console)
    elif stage == "export":
        from edgetune.export.parity import print_table
        from edgetune.export.run import export

        _refresh_recipe(recipe, run_dir)
        results = export(run_dir, console=console)
        _drop_unrequested(run_dir, results)  # only after the new files are in place
        parity = results["parity"]
        if console is not None:
            print_table(parity, console)
    elif stage == "bench":
        from edgetune.bench.run import bench

        _refresh_recipe(recipe, run_dir)
        result.report = bench(run_dir, console=console)


def _drop_unrequested(run_dir: Path, results: dict[str, Any]) -> None:
    """Remove exports of quants the recipe no longer asks for, so bench measures only current ones."""
    from edgetune.export.layout import gguf_files, onnx_dirs

    keep = {a.path.resolve() for fmt in ("gguf", "onnx") if fmt in results for a in results[fmt].artifacts}
    gguf = run_dir / "export" / "gguf"
    for path in gguf_files(gguf):
        if path.resolve() not in keep:
            path.unlink()
            path.with_suffix(".Modelfile").unlink(missing_ok=True)
    for path in onnx_dirs(run_dir / "export" / "onnx"):
        if path.resolve() not in keep:
            shutil.rmtree(path)
    dropped = [fmt for fmt in ("gguf", "onnx") if fmt not in results]
    for fmt in dropped:
        shutil.rmtree(run_dir / "export" / fmt, ignore_errors=True)
    from edgetune.export.parity_record import settle

    settle(run_dir, run_dir / "export")  # no parity rows for the files removed
    manifest = read_manifest(run_dir)
    record = manifest.get("stages", {}).get("export", {})
    # gguf, gguf_parity, gguf_wall_s, ..., and the importance matrix that lived in export/gguf
    stale = [
        key for key in record if key.split("_")[0] in dropped or (key == "imatrix" and "gguf" in dropped)
    ]
    removed = [  # the files of quants no longer asked for, removed above
        (fmt, entry)
        for fmt in ("gguf", "onnx")
        for entry in record.get(fmt, [])
        if isinstance(entry, dict) and not (run_dir / str(entry.get("path", ""))).exists()
    ]
    if stale or removed:  # the manifest lists what is on disk, not what a past recipe exported
        for key in stale:
            del record[key]
        for fmt, entry in removed:
            if fmt in record:
                record[fmt].remove(entry)
        atomic_write_json(run_dir / "manifest.json", manifest)


def _save(run_dir: Path, done: dict[str, str]) -> None:
    """Replace (not merge) the manifest's pipeline record."""
    manifest = read_manifest(run_dir)
    manifest["pipeline"] = dict(done)
    atomic_write_json(run_dir / "manifest.json", manifest)


def _tune_key(recipe: Recipe, data: str, base: str | None) -> str:
    """`base`: the base model's identity (base_identity); None: as `legacy` fingerprints hashed it."""
    model = hashed_settings("model", recipe.model, legacy=base is None)
    if base is not None:
        model["base"] = base
    return _digest(data, model, hashed_settings("train", recipe.train, legacy=base is None))


def _refresh_recipe(recipe: Recipe, run_dir: Path) -> None:
    """Later stages read the run's recipe.yaml: give them this invocation's export and bench settings
    (tune's sections are the same, or tune would have run)."""
    atomic_write_text(
        run_dir / RECIPE_FILE, f"# resolved recipe (from {recipe.source})\n" + dump_recipe(recipe)
    )
