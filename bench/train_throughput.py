#!/usr/bin/env python3
"""Training throughput: edgetune's Trainer step against a plain transformers + peft loop.

    python bench/train_throughput.py [--steps 6] [--warmup 2] [--batch-size 8]

Same model (SmolLM2-135M-Instruct), same LoRA settings, batches, sequence lengths, precision and
threads, measured in one process, alternating A/B/A/B so drift on a noisy machine hits both.
Tokens/s counts real (non-padding) tokens. Prints two ratios:

  edgetune / plain loop      goal >= 0.95x
  packing / padding          goal >= 1.3x, on a length-skewed dataset (7 short rows per long one)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _goals import Goals


def encoded_demo(skewed: bool):
    from edgetune.config import load_recipe
    from edgetune.data.prepare import prepare
    from edgetune.data.render import Encoded
    from edgetune.models import load_tokenizer, resolve_model

    recipe = load_recipe("demo")
    model_ref = resolve_model(recipe.model.base)
    tok = load_tokenizer(model_ref)
    examples = prepare(recipe.data, tok).encoded["train"].examples
    if skewed:  # one long row (several logs joined) per seven short ones: typical of real chat data
        longs = []
        for i in range(0, len(examples) - 4, 4):
            ids = sum((e.input_ids for e in examples[i : i + 4]), [])
            labels = sum((e.labels for e in examples[i : i + 4]), [])
            longs.append(Encoded(ids, labels, "joined"))
        shorts = sorted(examples, key=lambda e: len(e.input_ids))[: len(examples) // 2]
        examples = [
            longs[i // 8] if i % 8 == 0 else shorts[i % len(shorts)] for i in range(8 * min(len(longs), 40))
        ]
    return recipe, model_ref, tok, examples


class StepTimer:
    def __init__(self, warmup: int):
        self.warmup = warmup
        self.times: list[float] = []

    def mark(self):
        self.times.append(time.perf_counter())

    def rate(self, tokens_per_step: list[int]) -> float:
        t = self.times
        measured = range(self.warmup, len(t) - 1)
        return sum(tokens_per_step[i + 1] for i in measured) / (t[-1] - t[self.warmup])


def run_edgetune(recipe, model_ref, tok, examples, steps, warmup, packing: bool) -> float:
    from transformers import TrainerCallback

    from edgetune.tune.model import choose_setup, load_for_training
    from edgetune.tune.trainer import build_trainer, training_args

    recipe.train.packing = packing
    recipe.train.max_steps = steps
    setup = choose_setup("lora", recipe.train.precision)
    torch.manual_seed(0)
    model = load_for_training(model_ref, setup, recipe.train.lora)
    timer = StepTimer(warmup)

    class Mark(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 0:
                timer.mark()

        def on_step_end(self, args, state, control, **kw):
            timer.mark()

    with tempfile.TemporaryDirectory() as tmp:
        recipe.train.save_steps = recipe.train.eval_steps = 10 * steps
        args = training_args(recipe, Path(tmp), setup, has_valid=False)
        trainer = build_trainer(recipe, args, model, tok, examples, [], [Mark()])
        trainer.args.shuffle = False
        sampler_order = list(range(steps * recipe.train.batch_size))
        trainer._get_train_sampler = lambda *a, **k: sampler_order  # same rows, same order as the plain loop
        trainer.train()
    bs = recipe.train.batch_size
    per_step = [0] + [
        sum(len(examples[j].input_ids) for j in sampler_order[i * bs : (i + 1) * bs]) for i in range(steps)
    ]
    return timer.rate(per_step)


def run_plain(recipe, model_ref, tok, examples, steps, warmup) -> float:
    """What a user would write by hand with transformers + peft: pad, forward, backward, AdamW."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from edgetune.tune.model import choose_setup

    setup = choose_setup("lora", recipe.train.precision)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(model_ref.path), dtype=torch.float32)
    lora = recipe.train.lora
    model = get_peft_model(
        base,
        LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recipe.train.lr)
    bs = recipe.train.batch_size
    timer, per_step = StepTimer(warmup), [0]
    timer.mark()
    for step in range(steps):
        batch = examples[step * bs : (step + 1) * bs]
        n = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), n), tok.pad_token_id)
        labels = torch.full((len(batch), n), -100)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, e in enumerate(batch):
            ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
            labels[i, : len(e.labels)] = torch.tensor(e.labels)
            mask[i, : len(e.input_ids)] = 1
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=setup.bf16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.train.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        per_step.append(int(mask.sum()))
        timer.mark()
    return timer.rate(per_step)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    print(f"torch threads: {torch.get_num_threads()}")
    recipe, model_ref, tok, examples = encoded_demo(skewed=False)
    ours, plain = [], []
    for _ in range(args.rounds):
        ours.append(run_edgetune(recipe, model_ref, tok, examples, args.steps, args.warmup, packing=False))
        plain.append(run_plain(recipe, model_ref, tok, examples, args.steps, args.warmup))
    a, b = statistics.median(ours), statistics.median(plain)
    print(
        f"demo data, batch {recipe.train.batch_size}: edgetune {a:.0f} tok/s, plain loop {b:.0f} tok/s "
        f"(runs: {[round(x) for x in ours]} vs {[round(x) for x in plain]})"
    )
    goals = Goals()
    print(f"ratio edgetune / plain loop: {a / b:.2f}x {goals.at_least('edgetune / plain loop', a / b, 0.95)}")

    recipe, model_ref, tok, skewed = encoded_demo(skewed=True)
    padded, packed = [], []
    for _ in range(args.rounds):
        padded.append(run_edgetune(recipe, model_ref, tok, skewed, args.steps, args.warmup, packing=False))
        packed.append(run_edgetune(recipe, model_ref, tok, skewed, args.steps, args.warmup, packing=True))
    c, d = statistics.median(padded), statistics.median(packed)
    print(f"length-skewed data: padded {c:.0f} tok/s, packed {d:.0f} tok/s")
    print(f"ratio packing / padding: {d / c:.2f}x {goals.at_least('packing / padding', d / c, 1.3)}")
    return goals.exit_code()


if __name__ == "__main__":
    sys.exit(main())
