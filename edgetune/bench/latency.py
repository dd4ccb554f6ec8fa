"""Latency of one target, measured in a fresh subprocess so that load time and peak RSS are its own.

    python -m edgetune.bench.latency '<json request>'   (prints one JSON line)

The parent (`measure`) sends the target, the prompt ids and the budget; the child loads the model
(cold load time), runs one warm-up, then `repeats` times: prefill the prompt (time to first token,
prefill tokens/s) and decode `decode_tokens` greedy tokens with the cache (decode tokens/s).
Medians over the repeats are reported. `memory_bandwidth` measures the machine in the same run,
so the report can say how close decoding is to reading every weight once per token at full speed.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edgetune.errors import ModelError


def _child(request: dict) -> dict:
    from edgetune.bench.runners import Target, open_runner

    target = Target(**{**request["target"], "path": Path(request["target"]["path"])})
    if target.adapter:
        target.adapter = Path(target.adapter)
    room = max(2048, len(request["prompt_ids"]) + request["decode_tokens"] + 16)
    kwargs = {"logits_all": False, "n_ctx": room} if target.format == "gguf" else {}
    vram = None
    if target.device == "cuda":
        from edgetune.bench.vram import VramProbe

        vram = VramProbe()  # before anything touches the GPU: its baseline is what others hold
    started = time.perf_counter()
    runner = open_runner(target, request["threads"], **kwargs)
    load_s = time.perf_counter() - started
    if vram:
        vram.sample()
    prompt, n_decode = request["prompt_ids"], request["decode_tokens"]
    ttft, prefill_rate, decode_rate = [], [], []
    for repeat in range(request["repeats"] + 1):  # the first is the warm-up
        started = time.perf_counter()
        token = int(np.argmax(runner.prefill(prompt)))
        prefill_s = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(n_decode):
            token = int(np.argmax(runner.step(token)))  # EOS or not: every target decodes the same count
        decode_s = time.perf_counter() - started
        if vram:
            vram.sample()
        if repeat:
            ttft.append(prefill_s * 1000)
            prefill_rate.append(len(prompt) / prefill_s)
            decode_rate.append(n_decode / decode_s)
    return {
        "load_s": round(load_s, 3),
        "ttft_ms": round(statistics.median(ttft), 1),
        "prefill_tok_s": round(statistics.median(prefill_rate), 1),
        "decode_tok_s": round(statistics.median(decode_rate), 2),
        "decode_tok_s_runs": [round(r, 2) for r in decode_rate],
        "peak_rss_mb": None if (peak := peak_rss_bytes()) is None else round(peak / 2**20, 1),
        # GPU memory held by this target (CUDA context included); None on the CPU or without NVML
        "peak_vram_mb": round(vram.peak_bytes / 2**20, 1) if vram and vram.peak_bytes is not None else None,
    }


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory. VmHWM belongs to the address space that execve created;
    getrusage's ru_maxrss would include the parent's peak, which a child inherits on Linux. None
    where neither exists (Windows has no resource module: importing it at the top failed bench)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS counts bytes, Linux KiB


def measure(
    target, prompt_ids: list[int], decode_tokens: int, repeats: int, threads: int, timeout: float = 1800
) -> dict:
    target_json = {
        **asdict(target),
        "path": str(target.path),
        "adapter": str(target.adapter) if target.adapter else None,
    }
    request = {
        "target": target_json,
        "prompt_ids": [int(i) for i in prompt_ids],
        "decode_tokens": decode_tokens,
        "repeats": repeats,
        "threads": threads,
        "parent": os.getpid(),
    }
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "edgetune.bench.latency", json.dumps(request)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired as e:
        raise ModelError(f"latency of {target.name}: no result within {timeout:.0f} s") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        raise ModelError(f"latency of {target.name} failed in its subprocess: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_bandwidth(threads: int, mib: int = 512, repeats: int = 5) -> float:
    """Read bandwidth in GB/s: `threads` threads summing disjoint slices of a buffer larger than cache
    (numpy releases the GIL in the reduction). Best of `repeats`."""
    data = np.ones(mib * 2**20 // 8, dtype=np.float64)
    chunks = np.array_split(data, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            started = time.perf_counter()
            list(pool.map(np.sum, chunks))
            best = min(best, time.perf_counter() - started)
    return data.nbytes / best / 1e9


if __name__ == "__main__":
    from edgetune.child_process import die_with_parent

    request = json.loads(sys.argv[1])
    die_with_parent(request["parent"])
    print(json.dumps(_child(request)))
