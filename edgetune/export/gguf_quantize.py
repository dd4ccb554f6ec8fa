"""Quantising a GGUF file with llama.cpp's own quantiser (llama-cpp-python's llama_model_quantize).

The quantiser runs in a child process: llama.cpp prints a line per tensor, and a crash inside the
C++ library must not take the caller (or a half-written file) down with it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from edgetune.errors import EdgetuneError, InputError

# llama.cpp's quant names (any case) -> LLAMA_FTYPE_* attribute in llama_cpp
QUANTS = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q5_k_s": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "iq4_xs": "LLAMA_FTYPE_MOSTLY_IQ4_XS",
}


def quantize(source: Path, out: Path, quant: str, threads: int | None = None) -> Path:
    """Write `out` (atomically) as `quant` made from an F32/F16/BF16 GGUF file."""
    key = quant.lower()
    if key not in QUANTS:
        raise InputError(f"unknown GGUF quant {quant!r}; supported: {', '.join(QUANTS)}")
    if not source.is_file():
        raise InputError(f"{source}: GGUF file not found")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "edgetune.export.gguf_quantize", str(source), str(tmp), key, str(threads or 0)],
            capture_output=True, text=True,
        )
        if proc.returncode != 0 or not tmp.is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise EdgetuneError(f"llama.cpp failed to quantise {source} to {key} (exit {proc.returncode}: {last})")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return out


def _child(source: str, out: str, key: str, threads: int) -> int:
    import ctypes

    import llama_cpp

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTS[key])
    params.nthread = threads or os.cpu_count() or 1
    return llama_cpp.llama_model_quantize(source.encode(), out.encode(), ctypes.byref(params))


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
