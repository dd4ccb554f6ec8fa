#!/usr/bin/env python3
"""`make bench`: run every benchmark script in bench/ in turn; each prints its own side-by-side ratios."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def scripts() -> list[Path]:
    """The benchmarks `make bench` runs, each with no arguments. Not the gpu_* scripts (they need
    CUDA or pack for the device machine) nor step_profile.py (the GPU check runs it with a recipe it
    writes, bench/gpu_check.sh)."""
    skip = (Path(__file__).name, "step_profile.py")
    return [s for s in sorted(HERE.glob("*.py")) if s.name not in skip and not s.name.startswith("gpu_")]


def main() -> int:
    failed = []
    for script in scripts():
        print(f"== {script.name}", flush=True)
        if subprocess.run([sys.executable, str(script)]).returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
