#!/usr/bin/env python3
"""`make bench`: run every benchmark script in bench/ in turn; each prints its own side-by-side ratios
and checks its goals. Exit 1 where a script failed, 3 where one ran and missed a goal."""

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
    return [
        s for s in sorted(HERE.glob("*.py")) if s.name not in skip and not s.name.startswith(("gpu_", "_"))
    ]


def main() -> int:
    from _goals import GOAL_MISSED

    failed, missed = [], []
    for script in scripts():
        print(f"== {script.name}", flush=True)
        code = subprocess.run([sys.executable, str(script)]).returncode
        if code == GOAL_MISSED:
            missed.append(script.name)
        elif code != 0:
            failed.append(script.name)
    if missed:
        print(f"goals not met: {', '.join(missed)}", file=sys.stderr)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else GOAL_MISSED if missed else 0


if __name__ == "__main__":
    sys.exit(main())
