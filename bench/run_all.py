#!/usr/bin/env python3
"""`make bench`: run every benchmark script in bench/ in turn; each prints its own side-by-side ratios."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    failed = []
    for script in sorted(HERE.glob("*.py")):
        # the gpu_* scripts need CUDA or pack for the device machine (bench/gpu_check.sh)
        if script.name == Path(__file__).name or script.name.startswith("gpu_"):
            continue
        print(f"== {script.name}", flush=True)
        if subprocess.run([sys.executable, str(script)]).returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
