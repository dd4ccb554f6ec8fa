"""`edgetune export`: a run (merging first if needed) or a plain HF model directory -> export files."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgetune.config import Recipe, load_recipe
from edgetune.errors import InputError, NotBuiltError
from edgetune.export.gguf_export import export_gguf
from edgetune.export.modelfile import shared_system_prompt, write_modelfile
from edgetune.export.parity import check_gguf, rows_as_dicts
from edgetune.rundir import (
    RECIPE_FILE,
    RUNS_DIR,
    atomic_write_json,
    read_manifest,
    resolve_run_dir,
    update_manifest,
)


def _source(source: Path | None) -> tuple[Path | None, Path]:
    """(run_dir or None, HF model dir)."""
    if source is not None and (source / "config.json").is_file():
        return None, source.resolve()
    run_dir = resolve_run_dir(source)
    if not (run_dir / RECIPE_FILE).is_file():
        raise InputError(
            f"{run_dir}: neither a run directory (no {RECIPE_FILE}) nor an HF model directory (no config.json)"
        )
    return run_dir, run_dir / "merged"


def _prepared(recipe: Recipe, model_dir: Path):
    """The recipe's data rendered with the merged model's tokenizer and chat template (the training ones)."""
    from edgetune.data.prepare import prepare
    from edgetune.models import ResolvedModel, load_tokenizer

    return prepare(recipe.data, load_tokenizer(ResolvedModel(str(model_dir), model_dir, "local")))


def _existing_gguf(gguf_dir: Path) -> list[tuple[str, Path]]:
    found = sorted(gguf_dir.glob("*.gguf")) if gguf_dir.is_dir() else []
    if not found:
        raise InputError(f"{gguf_dir}: no GGUF files to check; run `edgetune export` first")
    return [(p.stem.rsplit("-", 1)[-1].lower(), p) for p in found]


def _relative(path: Path, run_dir: Path) -> str:
    return str(path.relative_to(run_dir)) if path.is_relative_to(run_dir) else str(path)


def export(
    source: Path | None = None,
    formats: list[str] | None = None,
    quants: list[str] | None = None,
    out: Path | None = None,
    imatrix: bool | None = None,
    check_only: bool = False,
    console=None,
) -> dict[str, Any]:
    run_dir, model_dir = _source(source)
    recipe = load_recipe(str(run_dir / RECIPE_FILE)) if run_dir else load_recipe("demo")
    formats = [f.lower() for f in (formats or recipe.export.formats)]
    unknown = sorted(set(formats) - {"gguf", "onnx"})
    if unknown:
        raise InputError(f"--to: unknown format {', '.join(unknown)}; supported: gguf, onnx")
    if "onnx" in formats:
        if formats == ["onnx"]:
            raise NotBuiltError("ONNX export is not built yet (tracked in issue #5)")
        if console is not None:
            console.print("[yellow]warning:[/] ONNX export is not built yet (issue #5); exporting GGUF only")
    has_weights = (model_dir / "model.safetensors").exists() or (
        model_dir / "model.safetensors.index.json"
    ).exists()
    if run_dir and not has_weights:
        from edgetune.merge import merge

        if console is not None:
            console.print("merging the adapter first (edgetune merge)")
        merge(run_dir, console=console)
    base_out = out or ((run_dir / "export") if run_dir else RUNS_DIR / "export" / model_dir.name)
    manifest = read_manifest(run_dir) if run_dir else {}
    provenance = {
        "base_model": manifest.get("base_model", {}).get("name", str(model_dir)),
        "recipe_sha256": manifest.get("recipe", {}).get("sha256", ""),
        "data_sha256": manifest.get("data", {}).get("sha256", {}).get("train", ""),
    }
    prepared = _prepared(recipe, model_dir)
    held_out = prepared.splits.test or prepared.splits.valid
    gguf_dir = base_out / "gguf"
    if check_only:
        rows = check_gguf(
            model_dir,
            _existing_gguf(gguf_dir),
            prepared.renderer,
            held_out[: recipe.export.parity_examples],
            max_new_tokens=recipe.bench.max_new_tokens,
            console=console,
        )
        _record_parity(run_dir, gguf_dir, rows)
        return {"parity": rows}
    use_imatrix = recipe.export.gguf.imatrix if imatrix is None else imatrix
    calibration = None
    if use_imatrix and run_dir is not None:
        calibration = [e.input_ids for e in prepared.encoded["train"].examples]
    elif use_imatrix and console is not None:
        console.print(
            "[yellow]warning:[/] a plain model directory has no training data for an importance matrix; "
            "quantising without one"
        )
    result = export_gguf(
        model_dir,
        gguf_dir,
        quants or recipe.export.gguf.quants,
        calibration,
        provenance,
        console=console,
    )
    # a plain model directory is checked on the demo's prompts, but its Modelfile gets no system prompt of ours
    system = shared_system_prompt(prepared.splits.train) if run_dir else None
    for artifact in result.artifacts:
        write_modelfile(artifact.path, prepared.renderer.tokenizer, system)
    if run_dir:
        update_manifest(
            run_dir,
            stages={
                "export": {
                    "status": "done",
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "wall_s": result.wall_s,
                    "gguf": [{**asdict(a), "path": _relative(a.path, run_dir)} for a in result.artifacts],
                    "imatrix": _relative(result.imatrix, run_dir) if result.imatrix else None,
                }
            },
        )
    rows = check_gguf(
        model_dir,
        [(a.quant, a.path) for a in result.artifacts],
        prepared.renderer,
        held_out[: recipe.export.parity_examples],
        max_new_tokens=recipe.bench.max_new_tokens,
        console=console,
    )
    _record_parity(run_dir, gguf_dir, rows)
    return {"gguf": result, "parity": rows}


def _record_parity(run_dir: Path | None, gguf_dir: Path, rows) -> None:
    atomic_write_json(gguf_dir / "parity.json", rows_as_dicts(rows))
    if run_dir:
        update_manifest(
            run_dir,
            stages={"export": {"parity": rows_as_dicts(rows), "parity_passed": all(r.passed for r in rows)}},
        )
