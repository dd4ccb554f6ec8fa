"""The record of which exported files passed their parity check: `parity.json` beside the files,
and the run's manifest. A row is kept only while its file is on disk and unreplaced: an export
forgets the rows of the files it is about to write before it writes them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from edgetune import strict_json
from edgetune.export.layout import gguf_files, gguf_quant, onnx_dirs
from edgetune.rundir import (
    atomic_write_json,
    changed_names,
    file_digests,
    sha256_file,
    sha256_files,
    update_manifest,
)

PARITY_FILE = "parity.json"


def on_disk(out_dir: Path, fmt: str) -> set[str]:
    """The quants of the files there: model-<quant>.gguf, or <quant>/model.onnx."""
    if fmt == "gguf":
        return {gguf_quant(p) for p in gguf_files(out_dir)}
    return {p.name.lower() for p in onnx_dirs(out_dir)}


def _rows(out_dir: Path) -> list[dict[str, Any]]:
    try:
        rows = strict_json.restore(json.loads((out_dir / PARITY_FILE).read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return []  # none yet, or damaged: what is measured next replaces it
    return (
        [r for r in rows if isinstance(r, dict) and isinstance(r.get("quant"), str)]
        if isinstance(rows, list)
        else []
    )


def _save(
    record_dir: Path | None, out_dir: Path, fmt: str, rows: list[dict[str, Any]], **section: Any
) -> None:
    atomic_write_json(out_dir / PARITY_FILE, rows)
    if record_dir:
        checked = {r["quant"].lower() for r in rows}
        passed = bool(rows) and all(r.get("passed") for r in rows) and on_disk(out_dir, fmt) <= checked
        section.update({f"{fmt}_parity": rows, f"{fmt}_parity_passed": passed})
        update_manifest(record_dir, stages={"export": section})


def forget(record_dir: Path | None, out_dir: Path, fmt: str, quants: list[str]) -> None:
    """Before files are (re)written: their rows describe the files they replace. The export is
    `running` until its checks are recorded."""
    replaced = {q.lower() for q in quants}
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = [r for r in _rows(out_dir) if r["quant"].lower() not in replaced]
    _save(record_dir, out_dir, fmt, kept, status="running")


def checked_digest(path: Path) -> str | None:
    """The digest a parity row holds of what it checked: the GGUF file, or an ONNX variant's graph
    and external data (model.onnx*); None where nothing is there."""
    if path.is_file():
        return sha256_file(path)
    files = sorted(path.glob("model.onnx*")) if path.is_dir() else []
    return sha256_files(path, files) if files else None


def side_digests(path: Path) -> dict[str, str] | None:
    """What an ONNX folder holds beside its graph, by file (its config.json, generation_config.json,
    tokenizer and chat templates, which a loader reads as much as the graph): sha256 of each, by
    path below the folder; None for a GGUF file or a folder that is not there."""
    return file_digests(path, lambda p: p.name.startswith("model.onnx")) if path.is_dir() else None


def sides_changed(path: Path, row: dict[str, Any]) -> list[str]:
    """The side files of `path` (see side_digests) added, removed or changed since `row`'s check;
    none where the row records none (checked by an edgetune that did not record them)."""
    known, now = row.get("side_sha256"), side_digests(path)
    return changed_names(known, now) if isinstance(known, dict) and now is not None else []


def _artifact(row: dict[str, Any], fmt: str) -> str:
    """A row's file or folder name in its format's folder (ONNX rows are named onnx/<variant>)."""
    return str(row.get("artifact", "")).removeprefix(f"{fmt}/")


def changed_since_checked(out_dir: Path, fmt: str, files: list[tuple[str, Path]]) -> list[str]:
    """The files (of `export --check`) whose bytes are not the ones their last parity check
    measured: the check passes or fails them again, but a file edited since (a flipped byte that
    still meets its goal) is worth saying."""
    rows = {_artifact(r, fmt): r for r in _rows(out_dir)}
    said = []
    for _, path in files:
        row = rows.get(path.name, {})
        known = row.get("sha256")
        if isinstance(known, str) and checked_digest(path) != known:
            said.append(
                f"{fmt}/{path.name}: changed since its last parity check (its bytes differ); checked again"
            )
        elif sides := sides_changed(path, row):
            said.append(
                f"{fmt}/{path.name}: {', '.join(sides)} changed since its last parity check; checked again"
            )
    return said


def record(record_dir: Path | None, out_dir: Path, fmt: str, rows: list[dict[str, Any]]) -> None:
    """The rows just measured, each with the digest of what it checked, with the earlier rows of
    the other files still on disk."""
    for row in rows:
        if "sha256" not in row and (digest := checked_digest(out_dir / _artifact(row, fmt))):
            row["sha256"] = digest
        # a new field, so that the rows an earlier edgetune recorded without it still vouch
        if "side_sha256" not in row and (sides := side_digests(out_dir / _artifact(row, fmt))) is not None:
            row["side_sha256"] = sides
    measured = {r["quant"].lower() for r in rows}
    there = on_disk(out_dir, fmt)
    kept = [r for r in _rows(out_dir) if r["quant"].lower() not in measured and r["quant"].lower() in there]
    _save(record_dir, out_dir, fmt, kept + rows)


def settle(record_dir: Path | None, export_dir: Path) -> None:
    """After an export (or files removed from one): drop the rows of files no longer there, and
    mark the export `done` when every file on disk has its check recorded (not after an
    interrupted export, nor after a --check of some of the files)."""
    checked = True
    for fmt in ("gguf", "onnx"):
        out_dir = export_dir / fmt
        if out_dir.is_dir():
            record(record_dir, out_dir, fmt, [])
            checked &= on_disk(out_dir, fmt) <= {r["quant"].lower() for r in _rows(out_dir)}
    if record_dir and checked:
        finished = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        update_manifest(record_dir, stages={"export": {"status": "done", "finished": finished}})


def parity_problem(manifest: dict[str, Any], fmt: str, quant: str, path: Path | None = None) -> str | None:
    """Why the run's exported (format, quant) file ships unverified: its parity check never ran
    (an interrupted export), it failed, or (given the file's `path`) the file is not the one it
    checked; None when it passed."""
    record = manifest.get("stages", {}).get("export", {})
    rows = [r for r in record.get(f"{fmt}_parity", []) if isinstance(r, dict)]  # a hand-edited one
    same_type = [r for r in rows if str(r.get("quant", "")).lower() == quant.lower()]
    # the row of this very file, where two files of one type are there (model- and mine-q8_0.gguf)
    row = next((r for r in same_type if path is not None and _artifact(r, fmt) == path.name), None)
    row = row or next(iter(same_type), None)
    if row is None:
        return "its export parity was never checked (run `edgetune export --check`)"
    if not row.get("passed"):
        failures = ", ".join(row.get("failures") or []) or f"see export/{fmt}/{PARITY_FILE}"
        return f"failed its export parity check ({failures})"
    digest = checked_digest(path) if path is not None and isinstance(row.get("sha256"), str) else None
    if digest is not None and digest != row["sha256"]:
        return "the file changed since its export parity check (run `edgetune export --check`)"
    if path is not None and (sides := sides_changed(path, row)):
        return f"{', '.join(sides)} changed since its export parity check (run `edgetune export --check`)"
    return None


def unchecked_exports(manifest: dict[str, Any], exported: list[tuple[str, str, Path]]) -> list[str]:
    """`fmt/quant: why` for each exported (format, quant, path) in the run's `manifest` that ships
    unverified (see parity_problem)."""
    return [
        f"{fmt}/{quant}: {problem}"
        for fmt, quant, path in exported
        if (problem := parity_problem(manifest, fmt, quant, path))
    ]


def run_export_problems(run_dir: Path) -> list[str]:
    """unchecked_exports for every file in the run's own export/ folder."""
    from edgetune.rundir import read_manifest

    export = run_dir / "export"
    exported = [("gguf", gguf_quant(p), p) for p in gguf_files(export / "gguf")]
    exported += [("onnx", p.name.lower(), p) for p in onnx_dirs(export / "onnx")]
    return unchecked_exports(read_manifest(run_dir), exported) if exported else []
