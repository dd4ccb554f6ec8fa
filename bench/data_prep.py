#!/usr/bin/env python3
"""Data preparation cost: edgetune's render + offset masking against plain tokenisation.

    python bench/data_prep.py [--repeats 5]

Both sides take the demo dataset's training rows with the same tokenizer, in the same process,
interleaved: edgetune's side is `Renderer.encode_many`, what `prepare` runs for tune, data check
and export (the chat template rendered per turn to locate each reply, tokens labelled by their
character offsets, tokenised a batch at a time); the other side tokenises the same rendered texts
in one batch and does nothing else. The ratio says what locating and masking the replies costs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from _goals import Goals

from edgetune.config import load_recipe
from edgetune.data.render import Renderer
from edgetune.data.split import make_splits
from edgetune.models import load_tokenizer, resolve_model

GOAL = 0.15  # locating and masking the replies costs under 7x what tokenising alone does


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    recipe = load_recipe("demo")
    tok = load_tokenizer(resolve_model(recipe.model.base))
    examples = make_splits(recipe.data).train
    renderer = Renderer(tok, max_seq_len=recipe.data.max_seq_len)
    texts = [renderer.spans(ex)[0] for ex in examples]
    n_tokens = sum(len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"])
    ours, plain = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        encoded = list(renderer.encode_many(examples))
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        tok(texts, add_special_tokens=False)
        plain.append(time.perf_counter() - t)
    assert len(encoded) == len(examples)
    a, b = statistics.median(ours), statistics.median(plain)
    print(f"examples: {len(examples)}, tokens: {n_tokens}, median of {args.repeats}")
    print(
        f"edgetune render+mask: {n_tokens / a:,.0f} tok/s   plain batched tokenisation of the rendered "
        f"texts: {n_tokens / b:,.0f} tok/s"
    )
    goals = Goals()
    print(
        f"ratio (edgetune / plain throughput): {b / a:.2f}x {goals.at_least('render+mask / plain', b / a, GOAL)}"
    )
    return goals.exit_code()


if __name__ == "__main__":
    sys.exit(main())
