"""Decode speed of the shipped llama.cpp Q4_K_M file against the merged torch fp32 model, side by
side in one run: the demo's headline ratio (goal: >= 3x on a CPU), with less noise than one bench run.

    python bench/decode_speedup.py [RUN_DIR] [--rounds 3]

RUN_DIR defaults to runs/latest (`make bench` runs the demo first). Each round measures both targets
with bench's own latency harness (a fresh process per target, a warm-up, the median of 3 repeats of
64 greedy tokens after a 142-token prompt, 2 threads), alternating targets so machine noise hits
both alike; prints each round and the median ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _goals import Goals  # noqa: E402

from edgetune.bench.latency import measure  # noqa: E402
from edgetune.bench.targets import discover_targets  # noqa: E402
from edgetune.config import load_recipe  # noqa: E402

GOAL = 3.0
PAIR = ("torch/merged", "gguf/q4_k_m")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", nargs="?", type=Path, default=ROOT / "runs" / "latest")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not (args.run_dir / "recipe.yaml").is_file():
        print(f"decode_speedup: {args.run_dir} is not a run; run `make demo` first", file=sys.stderr)
        return 2
    recipe = load_recipe(str(args.run_dir / "recipe.yaml"))
    targets = {t.name: t for t in discover_targets(args.run_dir, ["cpu"], recipe)}
    missing = [name for name in PAIR if name not in targets]
    if missing:
        print(f"decode_speedup: {args.run_dir} has no {', '.join(missing)} (export q4_k_m)", file=sys.stderr)
        return 2
    prompt = list(range(100, 242))  # decode speed does not depend on which 142 ids
    rates: dict[str, list[float]] = {name: [] for name in PAIR}
    for round_ in range(1, args.rounds + 1):
        for name in PAIR:
            rates[name].append(measure(targets[name], prompt, 64, 3, args.threads)["decode_tok_s"])
        print(f"round {round_}: " + ", ".join(f"{n} {rates[n][-1]:.1f} tok/s" for n in PAIR), flush=True)
    torch_rate, gguf_rate = (statistics.median(rates[n]) for n in PAIR)
    ratio = gguf_rate / torch_rate
    goals = Goals()
    print(
        f"median decode: torch fp32 {torch_rate:.1f} tok/s, llama.cpp Q4_K_M {gguf_rate:.1f} tok/s: "
        f"{ratio:.2f}x {goals.at_least('llama.cpp Q4_K_M / torch fp32 decode', ratio, GOAL)}"
    )
    return goals.exit_code()


if __name__ == "__main__":
    sys.exit(main())
