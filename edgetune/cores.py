"""How many CPU cores this process may run on."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity (a container's cpuset, `taskset`), not the
    machine's count. llama.cpp given 8 threads on 1 allowed core decoded 1.8x slower than with 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_threads() -> int:
    """The threads llama.cpp, onnxruntime and bench use where nothing says otherwise: the user's
    OMP_NUM_THREADS, which torch follows too (training took 1 thread and the same run's bench 2),
    else every usable core."""
    return omp_threads() or usable_cores()


def omp_threads() -> int | None:
    """OMP_NUM_THREADS as OpenMP reads it: a count, or a list whose first item is the outer
    level's ("2,1"); None where it is unset or no count ("²" is a digit to str.isdigit, not to int)."""
    given = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(given) if given.isascii() and given.isdigit() and int(given) > 0 else None


def more_than_the_cores(setting: str, threads: int | None) -> str | None:
    """The warning for a thread count past the cores this process may use (train.threads,
    bench.threads); None where it is within them."""
    cores = usable_cores()
    if not threads or threads <= cores:
        return None
    return f"{setting} {threads} is more than the {cores} cores this process may use: threads contend"


def cpu_name() -> str:
    """The CPU's model name, as a run's manifest records it."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
