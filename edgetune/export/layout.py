"""The files an export folder holds: `gguf/model-<quant>.gguf` and `onnx/<quant>/model.onnx`.

What an interrupted write leaves there is hidden (".name.*.tmp", ".onnx-trace.*.tmp/", a replaced
variant's ".<quant>.old-<pid>/") and is never an export: it is not checked, benched, fingerprinted or
picked, and the next export removes it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

LEFTOVERS = (".*.tmp", ".*.old-*", ".*.removing-*")
# beside an ONNX variant's model.onnx: what a front-end with the folder alone needs of its run, the
# system prompt every training chat had (a GGUF carries it as edgetune.system_prompt)
SHIPPED_SETTINGS = "edgetune.json"
# what edgetune writes into an exported file, by version: the manifest records each file's, and
# `edgetune run` exports again a file made at an earlier one, where it would ship it as up to date
# (2, 2026-12-07: the trained system prompt in every GGUF and ONNX folder, no local path in a GGUF's
# names, every file of an ONNX folder listed and hashed)
FILE_FORMAT = 2


def remove_leftovers(export_dir: Path) -> None:
    """What killed exports left in export_dir's gguf/ and onnx/ (edgetune's own folders, and only
    there: not recursively, never in the folder above, which may be a user's --out)."""
    from edgetune.rundir import remove_paths, restore_replaced

    for fmt in ("gguf", "onnx"):
        folder = export_dir / fmt
        if not folder.is_dir():
            continue
        for aside in list(folder.glob(".*.old-*")):  # killed between its two renames: the variant goes back
            restore_replaced(folder / aside.name[1:].rsplit(".old-", 1)[0])
        remove_paths({p for pattern in LEFTOVERS for p in folder.glob(pattern)})


def gguf_files(gguf_dir: Path) -> list[Path]:
    return (
        sorted(p for p in gguf_dir.glob("*.gguf") if not p.name.startswith(".")) if gguf_dir.is_dir() else []
    )


def onnx_dirs(onnx_dir: Path) -> list[Path]:
    """Each variant's directory (the one its model.onnx is in)."""
    if not onnx_dir.is_dir():
        return []
    return sorted(p.parent for p in onnx_dir.glob("*/model.onnx") if not p.parent.name.startswith("."))


def still_there(entries: list, run_dir: Path) -> list[dict]:
    """The entries of a run manifest's export list (each with its `path` in the run) whose file or
    folder is still on disk: the manifest lists what is there, not what a past export wrote."""
    return [
        e for e in entries if isinstance(e, dict) and e.get("path") and (run_dir / str(e["path"])).exists()
    ]


def gguf_quant(path: Path) -> str:
    """The file's type as its metadata says (general.file_type: what parity judges it by and bench
    names it after), or where none is stored or readable, its name's (model-q4_k_m.gguf -> q4_k_m)."""
    named = _named_type(path)
    try:
        stat = path.stat()
    except OSError:
        return named
    return _stored_type(str(path), stat.st_mtime_ns, stat.st_size) or named


def _named_type(path: Path) -> str:
    return path.stem.rsplit("-", 1)[-1].lower()


@lru_cache(maxsize=64)
def _stored_type(path: str, mtime_ns: int, size: int) -> str | None:
    """general.file_type as the type's name (MOSTLY_Q4_K_M -> q4_k_m, ALL_F32 -> f32)."""
    del mtime_ns, size  # part of the cache key only: a file written again is read again
    from gguf import LlamaFileType

    value = gguf_field(Path(path), "general.file_type")
    try:
        return LlamaFileType(int(value) & ~LlamaFileType.GUESSED).name.split("_", 1)[1].lower()
    except (TypeError, ValueError):  # none stored, or a type gguf-py does not know: its name says
        return None


def gguf_field(path: Path, key: str):
    """A GGUF metadata value (gguf-py's reading of it), or None where the file has none or cannot be
    read as a GGUF (damaged: the check that loads it says so)."""
    try:
        from gguf import GGUFReader

        field = GGUFReader(str(path)).fields.get(key)
        return field.contents() if field is not None else None
    except Exception:  # gguf-py raises what it meets (ValueError, IndexError, struct.error)
        return None


def recipe_exports(recipe) -> dict[str, set[str]]:
    """Format -> the types the recipe exports in it (as `edgetune export` names them)."""
    quants = {"gguf": recipe.export.gguf.quants, "onnx": recipe.export.onnx.quants}
    return {fmt: {q.lower() for q in quants[fmt]} for fmt in map(str.lower, recipe.export.formats)}


def missing_exports(run_dir: Path, recipe) -> list[str]:
    """The recipe's export types the run's export/ folder has no file of ("onnx/int8")."""
    from edgetune.export.parity_record import on_disk

    return [
        f"{fmt}/{quant}{_held_otherwise(run_dir / 'export' / fmt, quant) if fmt == 'gguf' else ''}"
        for fmt, quants in recipe_exports(recipe).items()
        for quant in sorted(quants - on_disk(run_dir / "export" / fmt, fmt))
    ]


def _held_otherwise(folder: Path, quant: str) -> str:
    """For a type missing from a GGUF folder: the files named after it that hold another type (a
    file copied over model-f16.gguf), which a GGUF is judged and benched by."""
    named = sorted(p for p in folder.glob("*.gguf") if _named_type(p) == quant)
    held = [f"{p.name} holds {gguf_quant(p)}" for p in named if gguf_quant(p) != quant]
    return f" ({', '.join(held)}, by its general.file_type)" if held else ""


def shipped_system_prompt(artifact: Path) -> str | None:
    """The trained system prompt an exported file carries (GGUF metadata, or an ONNX folder's
    SHIPPED_SETTINGS), for a file used away from its run; None where it carries none."""
    import json

    if not artifact.is_dir():
        found = gguf_field(artifact, "edgetune.system_prompt")
    else:
        try:
            settings = json.loads((artifact / SHIPPED_SETTINGS).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # none written (an older export), or unreadable: its own template
            return None
        found = settings.get("system_prompt") if isinstance(settings, dict) else None
    return found if isinstance(found, str) and found else None


def trained_system_prompt(run_dir: Path, prepared) -> str | None:
    """The system prompt every training chat of a run had, as tune recorded it (what chat on the run
    uses), or for a run from before it did, as the data says now: what every shipped file carries."""
    from edgetune.export.modelfile import shared_system_prompt
    from edgetune.rundir import read_manifest

    recorded = read_manifest(run_dir).get("data") or {}
    if "trained_system_prompt" in recorded:
        return recorded["trained_system_prompt"]
    return shared_system_prompt(prepared.splits.train, prepared.renderer)


def require_runtimes(formats) -> None:
    """Each runtime the formats' export and parity check need, named before any work starts."""
    from edgetune.errors import require

    if "gguf" in formats:  # the quantiser and the parity check
        require("llama_cpp", "GGUF export and its parity check")
    if "onnx" in formats:
        require("optimum.exporters.onnx", "ONNX export")
        require("onnxruntime", "ONNX export and its parity check")
