"""The files an export folder holds: `gguf/model-<quant>.gguf` and `onnx/<quant>/model.onnx`.

What an interrupted write leaves there is hidden (".name.*.tmp", ".onnx-trace.*.tmp/") and is never
an export: it is not checked, benched, fingerprinted or picked, and the next export removes it.
"""

from __future__ import annotations

from pathlib import Path


def gguf_files(gguf_dir: Path) -> list[Path]:
    return (
        sorted(p for p in gguf_dir.glob("*.gguf") if not p.name.startswith(".")) if gguf_dir.is_dir() else []
    )


def onnx_dirs(onnx_dir: Path) -> list[Path]:
    """Each variant's directory (the one its model.onnx is in)."""
    if not onnx_dir.is_dir():
        return []
    return sorted(p.parent for p in onnx_dir.glob("*/model.onnx") if not p.parent.name.startswith("."))


def gguf_quant(path: Path) -> str:
    """model-q4_k_m.gguf -> q4_k_m"""
    return path.stem.rsplit("-", 1)[-1].lower()
