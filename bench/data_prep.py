#!/usr/bin/env python3
"""Data preparation cost: edgetune's render + offset masking against plain tokenisation.

    python bench/data_prep.py [--repeats 3]

Both sides tokenise the same rendered chat texts of the demo dataset with the same tokenizer, in
the same process, interleaved; the ratio says what masking by character offsets (plus the
prefix renders that locate assistant turns) costs over tokenising alone.
"""

from __future__ import annotations

import argparse
import statistics
import time

from edgetune.config import load_recipe
from edgetune.data.render import Renderer
from edgetune.data.split import make_splits
from edgetune.models import load_tokenizer, resolve_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    recipe = load_recipe("demo")
    tok = load_tokenizer(resolve_model(recipe.model.base))
    examples = make_splits(recipe.data).train
    renderer = Renderer(tok, max_seq_len=recipe.data.max_seq_len)
    texts = [renderer.spans(ex)[0] for ex in examples]
    n_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    ours, plain = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        for ex in examples:
            renderer.encode(ex)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        for text in texts:
            tok(text, add_special_tokens=False)
        plain.append(time.perf_counter() - t)
    a, b = statistics.median(ours), statistics.median(plain)
    print(f"examples: {len(examples)}, tokens: {n_tokens}")
    print(
        f"edgetune render+mask: {n_tokens / a:,.0f} tok/s   plain tokenisation of pre-rendered text: {n_tokens / b:,.0f} tok/s"
    )
    print(f"ratio (edgetune / plain throughput): {b / a:.2f}x")


if __name__ == "__main__":
    main()
