"""`edgetune export --to gguf`: the merged model -> GGUF files (F16 and the recipe's quantised types)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.markup import escape

from edgetune.console import StageProgress
from edgetune.export.gguf_convert import OUTTYPES, convert
from edgetune.export.gguf_quantize import QUANTS, quantize
from edgetune.export.imatrix import compute_imatrix, save_imatrix, within
from edgetune.rundir import sha256_file

IMATRIX_MAX_TOKENS = 32768


@dataclass
class GGUFArtifact:
    quant: str
    path: Path
    size_bytes: int
    sha256: str


@dataclass
class GGUFExport:
    artifacts: list[GGUFArtifact]
    warnings: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    imatrix: Path | None = None


def export_gguf(
    model_dir: Path,
    out_dir: Path,
    quants: list[str],
    calibration: list[list[int]] | None,
    provenance: dict[str, str],
    console=None,
    f16_output: tuple[str, ...] = (),
    name: str | None = None,
) -> GGUFExport:
    """Convert and quantise. `calibration` (token ids of the training data, rendered with the
    training template) enables the importance matrix; None quantises without one. `name` is the
    files' general.name."""
    started = time.time()
    wanted = [q.lower() for q in quants]
    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts: list[GGUFArtifact] = []
    imatrix_path = None

    def note(message: str) -> None:
        if console is not None:
            console.print(message)

    warnings: list[str] = []

    def warn(message: str) -> None:  # once, though every conversion reads the same vocabulary
        if message not in warnings:
            warnings.append(message)
            if console is not None:
                console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)

    def record(quant: str, path: Path) -> None:
        artifacts.append(GGUFArtifact(quant, path, path.stat().st_size, sha256_file(path)))

    for q in [q for q in wanted if q in OUTTYPES]:
        note(f"gguf: converting to {q}")
        record(q, convert(model_dir, out_dir / f"model-{q}.gguf", q, provenance, name=name, warn=warn))
    to_quantise = [q for q in wanted if q in QUANTS]
    if not to_quantise:
        return GGUFExport(artifacts, warnings, round(time.time() - started, 1))
    if calibration:
        note("gguf: computing the importance matrix from the training data")
        read = within(calibration, IMATRIX_MAX_TOKENS)  # a 7B model on the CPU: many minutes
        with StageProgress(console).stage("gguf: importance matrix", len(read)) as tick:
            matrix = compute_imatrix(model_dir, read, IMATRIX_MAX_TOKENS, tick)
        tokens = min(sum(len(s) for s in calibration), IMATRIX_MAX_TOKENS)
        dataset = f"training data sha256 {provenance.get('data_sha256', '')[:16]}"
        imatrix_path = save_imatrix(
            matrix, out_dir / "imatrix.safetensors", dataset, tokens, len(calibration)
        )
    # quantise from F32, not F16: no double rounding for the small models edgetune targets
    source = out_dir / ".model-f32-source.gguf.tmp"
    try:
        note("gguf: converting to f32 (the quantiser's input)")
        convert(model_dir, source, "f32", provenance, name=name, warn=warn)
        for q in to_quantise:
            note(f"gguf: quantising to {q}" + (" with the importance matrix" if imatrix_path else ""))
            keep = q in f16_output
            record(q, quantize(source, out_dir / f"model-{q}.gguf", q, imatrix=imatrix_path, f16_output=keep))
    finally:
        with contextlib.suppress(FileNotFoundError):
            source.unlink()
    return GGUFExport(artifacts, warnings, round(time.time() - started, 1), imatrix_path)
