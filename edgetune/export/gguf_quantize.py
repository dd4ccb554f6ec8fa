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

from edgetune.cores import default_threads
from edgetune.errors import DISK_FULL_TEXT, EdgetuneError, InputError, disk_full

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


GGML_TYPE_F16 = 1


def quantize(
    source: Path,
    out: Path,
    quant: str,
    threads: int | None = None,
    imatrix: Path | None = None,
    f16_output: bool = False,
) -> Path:
    """Write `out` (atomically) as `quant` made from an F32/F16/BF16 GGUF file, guided by an
    importance matrix (edgetune's safetensors file, see imatrix.py) when one is given."""
    from edgetune.rundir import fsync_file, mode_for  # here: rundir's imports come back to this module

    key = quant.lower()
    if key not in QUANTS:
        raise InputError(f"unknown GGUF quant {quant!r}; supported: {', '.join(QUANTS)}")
    if not source.is_file():
        raise InputError(f"{source}: GGUF file not found")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgetune.export.gguf_quantize",
                str(source),
                str(tmp),
                key,
                str(threads or 0),
                str(imatrix or ""),
                "f16-output" if f16_output else "",
                str(os.getpid()),  # it ends with this process (child_process.die_with_parent)
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not tmp.is_file():
            # llama.cpp's writer on a full disk or a file-size limit: "basic_ios::clear: iostream error"
            if "iostream error" in proc.stderr or any(text in proc.stderr for text in DISK_FULL_TEXT):
                raise disk_full(out)
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise EdgetuneError(
                f"llama.cpp failed to quantise {source} to {key} (exit {proc.returncode}: {last})"
            )
        fsync_file(tmp)
        os.chmod(tmp, mode_for(out))  # a file the user made private stays so
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return out


def _imatrix_array(path: str):
    """The matrix as llama.cpp's C array of {name, data, size}, ended by a NULL name, plus the
    GGUF metadata llama-quantize records for it (as kv overrides)."""
    import ctypes

    import llama_cpp
    import numpy as np

    from edgetune.export.imatrix import load_imatrix

    matrix, meta = load_imatrix(Path(path))
    keep = []  # the arrays must outlive the call
    entries = (llama_cpp.llama_model_imatrix_data * (len(matrix) + 1))()
    for i, (name, values) in enumerate(sorted(matrix.items())):
        arr = np.ascontiguousarray(values, dtype=np.float32)
        keep.append(arr)
        entries[i].name = name.encode()
        entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = arr.size
    entries[len(matrix)].name = None
    kv = [
        ("quantize.imatrix.file", Path(path).name),
        ("quantize.imatrix.dataset", meta.get("dataset", "")),
        ("quantize.imatrix.entries_count", len(matrix)),
        ("quantize.imatrix.chunks_count", int(meta.get("sequences", 0))),
    ]
    overrides = (llama_cpp.llama_model_kv_override * (len(kv) + 1))()
    for i, (k, v) in enumerate(kv):
        overrides[i].key = k.encode()
        if isinstance(v, int):
            overrides[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
            overrides[i].value.val_i64 = v
        else:
            overrides[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            overrides[i].value.val_str = v.encode()[:127]
    overrides[len(kv)].key = b""
    return entries, overrides, keep


def _child(source: str, out: str, key: str, threads: int, imatrix: str, f16_output: bool = False) -> int:
    import ctypes

    import llama_cpp

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTS[key])
    params.nthread = threads or default_threads()
    if f16_output:  # the token embedding and the output head (one tensor when tied) stay F16
        params.output_tensor_type = GGML_TYPE_F16
        params.token_embedding_type = GGML_TYPE_F16
    if imatrix:
        entries, overrides, _keep = _imatrix_array(imatrix)
        params.imatrix = entries
        params.kv_overrides = overrides
    return llama_cpp.llama_model_quantize(source.encode(), out.encode(), ctypes.byref(params))


if __name__ == "__main__":
    from edgetune.child_process import die_with_parent

    die_with_parent(int(sys.argv[7]))
    sys.exit(
        _child(
            sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6] == "f16-output"
        )
    )
