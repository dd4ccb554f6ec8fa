"""`edgetune export`: a run (merging first if needed) or a plain HF model directory -> export files."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.markup import escape

from edgetune.config import Recipe, load_recipe
from edgetune.errors import InputError
from edgetune.export import parity_record
from edgetune.export.gguf_export import export_gguf
from edgetune.export.gguf_quantize import QUANTS
from edgetune.export.layout import (
    FILE_FORMAT,
    SHIPPED_SETTINGS,
    gguf_files,
    gguf_quant,
    missing_exports,
    onnx_dirs,
    remove_leftovers,
    require_runtimes,
    shipped_system_prompt,
    still_there,
    trained_system_prompt,
)
from edgetune.export.modelfile import write_modelfile
from edgetune.export.parity import rows_as_dicts
from edgetune.merged_record import rendered
from edgetune.pathnames import refuse_unusable
from edgetune.process_state import kept_process_state
from edgetune.run_recipe import load_run_recipe
from edgetune.rundir import (
    ADAPTER_HINT,
    RECIPE_FILE,
    RUNS_DIR,
    atomic_write_json,
    file_in_the_way,
    is_run_dir,
    read_manifest,
    resolve_run_dir,
    run_lock,
    update_manifest,
)


def _source(source: Path | str | None) -> tuple[Path | None, Path]:
    """(run_dir or None, HF model dir). A run's merged/ folder is that run: its recipe's data,
    types and shipped system prompt, its lock (a merge of the run must not rewrite it meanwhile)."""
    source = None if source is None else Path(source)  # a str from a program calling export()
    if source is not None:
        refuse_unusable(source, "SOURCE")  # (is_file() raises where a name is too long)
    if source is not None and source.name == "merged" and (source.parent / RECIPE_FILE).is_file():
        source = source.parent
    if source is not None and (source / "config.json").is_file():
        from edgetune.models import refuse_pickle, refuse_stored_quantized
        from edgetune.validate import check_model_dir

        refuse_pickle(source, can_allow=False)
        check_model_dir(source)
        refuse_stored_quantized(source, str(source))
        from edgetune.config_from_transformers5 import readable_model_dir

        return None, readable_model_dir(source.resolve())
    if source is not None and source.is_file():
        raise InputError(
            f"{source}: a file; export takes a run directory or an HF model directory (to check an exported "
            "file against its model, put it in OUT/gguf/, or an ONNX folder in OUT/onnx/, and run "
            "`edgetune export MODEL --check --out OUT`)"
        )
    run_dir = resolve_run_dir(source)
    if not (run_dir / RECIPE_FILE).is_file():
        raise InputError(
            f"{run_dir}: neither a run directory (no {RECIPE_FILE}) nor an HF model directory (no config.json)"
            + (ADAPTER_HINT if (run_dir / "adapter_config.json").is_file() else "")
        )
    return run_dir, run_dir / "merged"


def _prepared(recipe: Recipe, model_dir: Path, plain_model: bool):
    """The recipe's data rendered with the merged model's tokenizer and chat template (the training
    ones). A plain model is checked on the demo's chats: where its template refuses their system
    turn (Mistral's [INST] one), on the same chats without it, not on an error about our file."""
    import dataclasses
    import json
    import tempfile

    from edgetune.data.prepare import prepare
    from edgetune.errors import DataError
    from edgetune.models import ResolvedModel, load_tokenizer

    tokenizer = load_tokenizer(ResolvedModel(str(model_dir), model_dir, "local"))
    try:
        return prepare(recipe.data, tokenizer)
    except DataError as refused:
        # only the demo's chats (a plain model's recipe is the demo's), only for their system turn
        if not plain_model or "chat template" not in str(refused) or "system" not in str(refused).lower():
            raise
        error = refused
    lines = Path(recipe.data.train).read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    for row in rows:
        row["messages"] = [m for m in row["messages"] if m["role"] != "system"]
    with tempfile.TemporaryDirectory(prefix="edgetune-parity-") as tmp:
        chats = Path(tmp) / Path(recipe.data.train).name
        chats.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        try:
            return prepare(dataclasses.replace(recipe.data, train=str(chats)), tokenizer)
        except DataError:
            raise error from None  # what the template refuses in the demo's own file, not in a copy


def _existing_gguf(gguf_dir: Path) -> list[tuple[str, Path]]:
    found = gguf_files(gguf_dir)
    if not found:
        raise InputError(f"{gguf_dir}: no GGUF files to check; run `edgetune export` first")
    return [(gguf_quant(p), p) for p in found]


def _relative(path: Path, run_dir: Path) -> str:
    return str(path.relative_to(run_dir)) if path.is_relative_to(run_dir) else str(path)


def split_quants(quants: list[str] | None, recipe: Recipe) -> tuple[list[str], list[str]]:
    """--quant names -> (GGUF types, ONNX variants); a format the names do not mention keeps the recipe's."""
    from edgetune.export.settings import GGUF_QUANTS, ONNX_QUANTS, type_names

    if not quants:  # the recipe's, already spelled as files are named
        return recipe.export.gguf.quants, recipe.export.onnx.quants
    names = type_names(quants)
    unknown = [q for q in names if q not in GGUF_QUANTS and q not in ONNX_QUANTS]
    if unknown:
        raise InputError(
            f"--quant: unknown {', '.join(unknown)}; GGUF: {', '.join(GGUF_QUANTS)}; ONNX: {', '.join(ONNX_QUANTS)}"
        )
    gguf = [q for q in names if q in GGUF_QUANTS] or recipe.export.gguf.quants
    onnx = [q for q in names if q in ONNX_QUANTS] or recipe.export.onnx.quants
    return gguf, onnx


def _refuse_unexported_quants(quants: list[str] | None, formats: list[str]) -> None:
    """--quant int8 --to gguf would export the recipe's GGUF types and ignore the one named."""
    from edgetune.export.settings import ONNX_QUANTS

    for q in quants or []:
        fmt = "onnx" if q.lower() in ONNX_QUANTS else "gguf"
        if fmt not in formats:
            raise InputError(
                f"--quant {q}: a {fmt.upper()} type, but this export covers only {', '.join(formats)}"
            )


def _existing_onnx(onnx_dir: Path) -> list[tuple[str, Path]]:
    found = onnx_dirs(onnx_dir)
    if not found:
        raise InputError(f"{onnx_dir}: no ONNX exports to check; run `edgetune export --to onnx` first")
    return [(p.name.lower(), p) for p in found]  # onnx/FP32 is the fp32 type, as a GGUF's name is read


@contextmanager
def _out_lock(base_out: Path, run_dir: Path | None) -> Iterator[None]:
    """--out elsewhere: the folder written to is locked too, as the run it belongs to where it is a
    run's export/ folder, so `export A --out runs/B/export` and B's own export or bench cannot race."""
    owner = base_out.parent if base_out.name == "export" and is_run_dir(base_out.parent) else base_out
    if run_dir is None or owner.resolve() == run_dir.resolve():
        yield
        return
    with run_lock(owner, "export"):
        yield


def export(
    source: Path | str | None = None,
    formats: list[str] | None = None,
    quants: list[str] | None = None,
    out: Path | str | None = None,
    imatrix: bool | None = None,
    check_only: bool = False,
    console=None,
) -> dict[str, Any]:
    from edgetune.export.parity import check_gguf, check_onnx

    run_dir, model_dir = _source(source)
    recipe = load_run_recipe(run_dir) if run_dir else load_recipe("demo")
    base_out = (
        Path(out) if out else ((run_dir / "export") if run_dir else RUNS_DIR / "export" / model_dir.name)
    )
    if blocked := file_in_the_way(base_out):
        raise InputError(f"{blocked}: not a directory; --out names the folder the exports go in")
    # the run's manifest records its own export/ only: files sent elsewhere (--out) are not the run's
    record_dir = run_dir if run_dir and base_out.resolve() == (run_dir / "export").resolve() else None
    # loading the models it checks draws from torch's RNG: the caller's again once export returns
    with run_lock(run_dir or base_out, "export"), _out_lock(base_out, run_dir), kept_process_state():
        if run_dir and not record_dir and console is not None:
            console.print(
                f"note: {escape(str(base_out))} is outside the run: its manifest does not record these files"
            )
        gguf_dir, onnx_dir = base_out / "gguf", base_out / "onnx"
        if check_only and not formats:  # check what is there
            formats = [f for f, d in (("gguf", gguf_dir), ("onnx", onnx_dir)) if d.is_dir()] or ["gguf"]
        formats = [f.lower() for f in (formats or recipe.export.formats)]
        unknown = sorted(set(formats) - {"gguf", "onnx"})
        if unknown:
            raise InputError(f"--to: unknown format {', '.join(unknown)}; supported: gguf, onnx")
        gguf_quants, onnx_quants = split_quants(quants, recipe)
        _refuse_unexported_quants(quants, formats)
        require_runtimes(formats)  # named before the f32 file is written
        if check_only:  # before any model loads: nothing exported is the error to report
            formats, found = _files_to_check(
                run_dir, record_dir, recipe, model_dir, base_out, formats, quants, console
            )
        else:
            _ready_to_write(run_dir, model_dir, base_out, formats, console)
        # a template edited in merged/ since the merge is named as that, not as a row of the data
        prepared = rendered(
            run_dir, console, lambda: _prepared(recipe, model_dir, plain_model=run_dir is None)
        )
        held_out = _parity_examples(prepared, recipe, console)
        budget = recipe.bench.max_new_tokens
        # the system prompt every training chat had: in each shipped file, for a front-end (and
        # `edgetune chat`) that has the file alone; a model directory's own where it carries one (a
        # run's merged model copied away), else none
        system = trained_system_prompt(run_dir, prepared) if run_dir else shipped_system_prompt(model_dir)
        results: dict[str, Any] = {"parity": []}
        if "gguf" in formats:
            if check_only:
                artifacts = found["gguf"]
                _say_changed(gguf_dir, "gguf", artifacts, console)
            else:
                parity_record.forget(record_dir, gguf_dir, "gguf", gguf_quants)
                gguf = _export_gguf(
                    recipe, run_dir, model_dir, gguf_dir, gguf_quants, prepared, imatrix, system, console
                )
                imatrix_path = _relative(gguf.imatrix, run_dir) if record_dir and gguf.imatrix else None
                # an export that quantised nothing (--quant f16) leaves the files made with the
                # recorded matrix, and the record, as they were
                quantised = any(q in QUANTS for q in gguf_quants)
                _record_stage(record_dir, "gguf", gguf, {"imatrix": imatrix_path} if quantised else {})
                results["gguf"], artifacts = gguf, [(a.quant, a.path) for a in gguf.artifacts]
            rows = check_gguf(
                model_dir, artifacts, prepared.renderer, held_out, budget, console, recipe.export.parity_kl
            )
            parity_record.record(record_dir, gguf_dir, "gguf", rows_as_dicts(rows))
            results["parity"] += rows
        if "onnx" in formats:
            if check_only:
                variants = found["onnx"]
                _say_changed(onnx_dir, "onnx", variants, console)
            else:
                from edgetune.export.onnx_export import export_onnx

                parity_record.forget(record_dir, onnx_dir, "onnx", onnx_quants)
                onnx = export_onnx(model_dir, onnx_dir, onnx_quants, recipe.export.onnx, console=console)
                for artifact in onnx.artifacts if system else ():
                    atomic_write_json(artifact.path / SHIPPED_SETTINGS, {"system_prompt": system})
                _note_optimum_misreads(model_dir, console)
                _record_stage(record_dir, "onnx", onnx, {})
                results["onnx"], variants = onnx, [(a.quant, a.path) for a in onnx.artifacts]
            rows = check_onnx(
                model_dir, variants, prepared.renderer, held_out, budget, console, recipe.export.parity_kl
            )
            parity_record.record(record_dir, onnx_dir, "onnx", rows_as_dicts(rows))
            results["parity"] += rows
        parity_record.settle(record_dir, base_out)
        return results


def _files_to_check(run_dir, record_dir, recipe, model_dir: Path, base_out: Path, formats, quants, console):
    """`export --check`: (the formats to check, their files {format: [(quant, path)]}), refused
    before any model loads where there is nothing to check or nothing to check against."""
    found = {
        f: _existing_gguf(base_out / "gguf") if f == "gguf" else _existing_onnx(base_out / "onnx")
        for f in formats
    }
    if quants:  # --check --quant q4_k_m: only the files named, not the recipe's other types
        named = {q.lower() for q in quants}
        found = {f: [(q, p) for q, p in files if q in named] for f, files in found.items()}
        formats = [f for f in formats if found[f]]
        if not formats:
            raise InputError(f"--quant {','.join(quants)}: no such export in {base_out} to check")
    if not (model_dir / "config.json").is_file():
        raise InputError(
            f"{model_dir}: no merged model to check the exports against; run `edgetune merge` first"
        )
    if record_dir and not quants and console is not None and (missing := missing_exports(run_dir, recipe)):
        console.print(
            f"[yellow]warning:[/] the recipe exports {', '.join(missing)}: not in the run, unchecked"
        )
    return formats, found


def _ready_to_write(run_dir, model_dir: Path, base_out: Path, formats, console) -> None:
    """Before an export writes: what a killed one left removed, the run merged if it is not, and a
    warning where the disk may not hold what it writes."""
    from edgetune.rundir import low_space_warning, weights_bytes

    remove_leftovers(base_out)  # what a killed export was writing (its folder is locked)
    _merge_if_needed(run_dir, model_dir, console)
    # GGUF: an F32 quantiser input plus the files; ONNX: the fp32 trace plus each variant
    needed = weights_bytes(model_dir) * (3 * ("gguf" in formats) + 3 * ("onnx" in formats))
    warning = low_space_warning(base_out, needed, "this export")
    if warning and console is not None:
        console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)


def _parity_examples(prepared, recipe: Recipe, console) -> list:
    """The held-out examples parity checks on; training ones where there are none (parity compares
    runtimes on any prompts: training ones still show a lost template)."""
    held_out = prepared.splits.held_out(recipe.export.parity_examples)
    if not held_out:
        held_out = prepared.splits.train[: recipe.export.parity_examples]
        if console is not None:
            console.print(
                "[yellow]warning:[/] no test or validation split: parity is checked on training examples"
            )
    return held_out


def _say_changed(out_dir: Path, fmt: str, files: list[tuple[str, Path]], console) -> None:
    for change in parity_record.changed_since_checked(out_dir, fmt, files) if console is not None else ():
        console.print(f"[yellow]warning:[/] {escape(change)}", soft_wrap=True)


def _note_optimum_misreads(model_dir: Path, console) -> None:
    import json

    from edgetune.export.onnx_export import optimum_misreads

    why = optimum_misreads(json.loads((model_dir / "config.json").read_text()))
    if why and console is not None:
        console.print(
            f"[yellow]note:[/] optimum's ORTModelForCausalLM (optimum-onnx 0.1.0) cannot generate with "
            f"these ONNX folders ({why}); onnxruntime, edgetune chat and bench run them",
            soft_wrap=True,
        )


def _merge_if_needed(run_dir: Path | None, model_dir: Path, console) -> None:
    from edgetune.validate import damage

    has_weights = (model_dir / "model.safetensors").exists() or (
        model_dir / "model.safetensors.index.json"
    ).exists()
    damaged = damage(model_dir) if run_dir and has_weights else None
    if run_dir and (not has_weights or damaged):
        from edgetune.merge import merge

        if console is not None:
            why = f"{escape(damaged)}: merging the adapter again" if damaged else "merging the adapter first"
            console.print(f"{why} (edgetune merge)", soft_wrap=True)
        merge(run_dir, console=console)


def _base_name(base: dict, model_dir: Path) -> str:
    """The model a file was made from, as shipped files name it: a hub id or built-in name, or the
    directory's name for a local one (a shipped file holds no local path)."""
    if not base.get("name"):
        return model_dir.resolve().name
    return Path(base["name"]).name if base.get("kind") == "local" else base["name"]


def _gguf_name(recipe, base: dict, model_dir: Path) -> str:
    """What runtimes list the model as: the recipe and the model it tuned (the manifest's base_model)."""
    if not base.get("name"):
        return _base_name(base, model_dir)
    return f"{recipe.name} (tuned from {_base_name(base, model_dir)})"


def _export_gguf(recipe, run_dir, model_dir, gguf_dir, quants, prepared, imatrix, system, console):
    manifest = read_manifest(run_dir) if run_dir else {}
    base = manifest.get("base_model", {})
    provenance = {
        "base_model": _base_name(base, model_dir),
        "base_model_sha256": base.get("sha256", ""),
        "recipe_sha256": manifest.get("recipe", {}).get("sha256", ""),
        "data_sha256": manifest.get("data", {}).get("sha256", {}).get("train", ""),
        "system_prompt": system or "",  # edgetune.system_prompt
    }
    provenance = {key: value for key, value in provenance.items() if value}
    use_imatrix = recipe.export.gguf.imatrix if imatrix is None else imatrix
    calibration = None
    if use_imatrix and run_dir is not None:
        calibration = [e.input_ids for e in prepared.encoded["train"].examples]
    elif use_imatrix and console is not None and any(q.lower() in QUANTS for q in quants):
        console.print(  # (f32 and f16 are converted, not quantised: no matrix to miss)
            "[yellow]warning:[/] a plain model directory has no training data for an importance matrix; "
            "quantising without one"
        )
    result = export_gguf(
        model_dir,
        gguf_dir,
        quants,
        calibration,
        provenance,
        console=console,
        f16_output=tuple(q.lower() for q in recipe.export.gguf.f16_output),
        name=_gguf_name(recipe, base, model_dir),
    )
    from transformers import AutoConfig

    from edgetune.export.gguf_arch import faithful_context

    num_ctx = faithful_context(AutoConfig.from_pretrained(str(model_dir)))
    plain = bool(run_dir) and prepared.renderer.plain_prompts(prepared.splits.format)
    for artifact in result.artifacts:
        write_modelfile(artifact.path, prepared.renderer, system, num_ctx, plain=plain)
    return result


def _record_stage(run_dir: Path | None, fmt: str, result, extra: dict[str, Any]) -> None:
    """The files just written, beside the earlier entries of the files this export left alone (an
    `export --quant q8_0` keeps the f16 entry of the file still next to it)."""
    if not run_dir:
        return
    written = [
        {**asdict(a), "path": _relative(a.path, run_dir), "format": FILE_FORMAT} for a in result.artifacts
    ]
    replaced = {entry["quant"] for entry in written}
    earlier = read_manifest(run_dir).get("stages", {}).get("export", {}).get(fmt, [])
    kept = [entry for entry in still_there(earlier, run_dir) if entry.get("quant") not in replaced]
    update_manifest(
        run_dir,
        stages={
            "export": {
                f"{fmt}_wall_s": result.wall_s,
                fmt: sorted(kept + written, key=lambda e: e["path"]),
                **extra,
            }
        },
    )
