"""What a run's manifest records of its export, held against the files on disk and the types the
recipe asks for: whether an export is whole (every file listed still as written, parity-checked,
made by today's edgetune), whether it covers the recipe, and moving aside what the recipe no longer
lists."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.markup import escape

from edgetune.config import Recipe
from edgetune.export.gguf_quantize import QUANTS
from edgetune.export.layout import recipe_exports
from edgetune.rundir import atomic_write_json, read_manifest, sha256_file


def export_whole(run_dir: Path, fmt: str | None = None) -> bool:
    """The export finished (a manual one interrupted before its parity checks did not), and every
    file its manifest lists (of `fmt`, which must list some) is still there as it was written: an
    ONNX folder that lost its tokenizer, or a file changed in place, is no export its parity check
    vouches for. (bench hashes the same files for its own fingerprint, once per process.)"""
    manifest = read_manifest(run_dir)
    record = manifest.get("stages", {}).get("export", {})
    if fmt is not None and not record.get(fmt):
        return False
    if record.get("status") != "done" and (fmt is None or not _checked(record, fmt)):
        return False  # (one format, checked, stands while an export of the other was interrupted)
    for entry in [*record.get("gguf", []), *record.get("onnx", [])] if fmt is None else record[fmt]:
        if not isinstance(entry, dict) or not entry.get("path"):
            continue
        if made_earlier(entry, manifest):
            return False
        where = run_dir / str(entry["path"])
        names = entry.get("files") if isinstance(entry.get("files"), dict) else {}
        if not where.exists() or any(not (where / name).is_file() for name in names):
            return False
        if where.is_file() and entry.get("size_bytes") not in (None, where.stat().st_size):
            return False  # a GGUF cut short
        written = (
            [(where, entry.get("sha256"))] if where.is_file() else [(where / n, d) for n, d in names.items()]
        )
        if any(isinstance(digest, str) and sha256_file(path) != digest for path, digest in written):
            return False
    return True


def made_earlier(entry: dict[str, Any], manifest: dict[str, Any]) -> bool:
    """An exported file an earlier edgetune wrote without what it writes today (FILE_FORMAT). One
    that records no format is of format 2 where the run's tune recorded its trained system prompt:
    the edgetune that did (2026-12-07) wrote format 2's files, and an export follows its tune."""
    from edgetune.export.layout import FILE_FORMAT

    made = entry.get("format", 2 if "trained_system_prompt" in manifest.get("data", {}) else 1)
    return not isinstance(made, int) or made < FILE_FORMAT


def _checked(record: dict[str, Any], fmt: str) -> bool:
    """Every file the manifest lists of `fmt` has its parity row: an export forgets the rows of the
    files it is about to write, so these were checked after their last write."""
    rows = {str(r.get("quant", "")).lower() for r in record.get(f"{fmt}_parity") or [] if isinstance(r, dict)}
    listed = {str(e.get("quant", "")).lower() for e in record[fmt] if isinstance(e, dict)}
    return bool(listed) and listed <= rows


def covers(run_dir: Path, recipe: Recipe, only: str | None = None) -> bool:
    """Whether the run's export lists a file of every type the recipe exports (a hand-run export
    since may have dropped one deleted by hand), and GGUFs quantised with an importance matrix
    exactly where the recipe asks for one (a hand-run `export --imatrix off` made others).
    `only`: the one format to look at."""
    record = read_manifest(run_dir).get("stages", {}).get("export", {})
    for fmt, quants in recipe_exports(recipe).items():
        listed = {str(e.get("quant", "")).lower() for e in record.get(fmt, []) if isinstance(e, dict)}
        if (only is None or fmt == only) and not quants <= listed:
            return False
    if only in (None, "gguf") and any(q in QUANTS for q in recipe_exports(recipe).get("gguf", ())):
        return bool(record.get("imatrix")) == recipe.export.gguf.imatrix
    return True


def unrequested(run_dir: Path, wanted: dict[str, set[str]]) -> list[Path]:
    """The exported files and folders of a format or quant not in `wanted` (format -> quants)."""
    from edgetune.export.layout import gguf_files, gguf_quant, onnx_dirs

    export = run_dir / "export"
    return [p for p in gguf_files(export / "gguf") if gguf_quant(p) not in wanted.get("gguf", ())] + [
        p for p in onnx_dirs(export / "onnx") if p.name.lower() not in wanted.get("onnx", ())
    ]


UNLISTED = "unlisted-exports"  # in a run: exports its recipe does not list, moved out of export/


def drop_unrequested(run_dir: Path, wanted: dict[str, set[str]], say: Callable[[str], None] | None) -> None:
    """Move exports of formats and quants the recipe does not ask for (a past recipe's, or a
    hand-run `edgetune export --quant`'s) out of export/ into unlisted-exports/, so bench measures,
    and --pick ships, only current ones, and nothing made is lost (one of a type there is replaced)."""
    from edgetune.export.layout import still_there

    for path in unrequested(run_dir, wanted):
        aside = run_dir / UNLISTED / path.parent.name / path.name  # unlisted-exports/gguf/model-f16.gguf
        aside.parent.mkdir(parents=True, exist_ok=True)
        files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path]
        size = sum(f.stat().st_size for f in files)
        for each, to in ((path, aside), (path.with_suffix(".Modelfile"), aside.with_suffix(".Modelfile"))):
            if each.exists():
                shutil.rmtree(to) if to.is_dir() else to.unlink(missing_ok=True)
                shutil.move(each, to)  # export/ may be a link to another disk: a rename would fail
        if say is not None:
            where = escape(str(aside.parent.relative_to(run_dir)))
            say(
                f"export: {escape(str(path.relative_to(run_dir)))} is not in the recipe's exports: moved "
                f"to {where}/ ({size / 1e6:,.0f} MB; delete it there once it is not needed)"
            )
    dropped = [fmt for fmt in ("gguf", "onnx") if fmt not in wanted]
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
    listed = {fmt: record[fmt] for fmt in ("gguf", "onnx") if fmt in record and fmt not in dropped}
    there = {fmt: still_there(entries, run_dir) for fmt, entries in listed.items()}  # not the removed
    if stale or there != listed:  # the manifest lists what is on disk, not what a past recipe exported
        for key in stale:
            del record[key]
        record.update(there)
        atomic_write_json(run_dir / "manifest.json", manifest)
