#!/usr/bin/env python3
"""The LM head on supervised positions only: edgetune's loss against the two usual ways.

    python bench/supervised_logits.py [--batches 6] [--batch-size 8]

SmolLM2-135M-Instruct with edgetune's LoRA, padded batches of the demo data (packing off, as in
the GPU check's QLoRA/LoRA step), one forward and backward of each way on every batch, their order
rotated from batch to batch so a noisy machine's drift hits all three:

  full       the model's own loss: logits at every position, padding included
  union      logits_to_keep with the positions any row of the batch supervises
  per row    edgetune's Trainer: the head sees each row's supervised positions only

Prints the logit rows each way computes and the step-time ratios (on CUDA, peak memory too).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _goals import Goals  # noqa: E402
from train_throughput import encoded_demo  # noqa: E402

WAYS = ("full", "union", "per row")
# the three ways compute one loss: a difference past these is a bug, not rounding
LOSS_BOUND = {"fp32": 1e-5, "bf16": 2e-2}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=6, help="measured, after one warm-up batch")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    import transformers
    from transformers import TrainingArguments

    from edgetune.data.render import IGNORE
    from edgetune.tune.batches import PadCollator
    from edgetune.tune.model import choose_setup, load_for_training
    from edgetune.tune.trainer import SupervisedLogitsTrainer

    transformers.logging.set_verbosity_error()
    recipe, model_ref, tok, examples = encoded_demo(skewed=False)
    setup = choose_setup("lora", recipe.train.precision)
    torch.manual_seed(0)
    model = load_for_training(model_ref, setup, recipe.train.lora)
    device = next(model.parameters()).device
    trainer = SupervisedLogitsTrainer(
        model=model,
        args=TrainingArguments(output_dir="/tmp/unused", report_to=[], use_cpu=device.type == "cpu"),
    )
    vocab = model.get_output_embeddings().weight.shape[0]

    def loss_of(way: str, batch: dict) -> tuple[torch.Tensor, int]:
        labels = batch["labels"]
        if way == "full":
            return model(**batch, use_cache=False).loss, labels.numel()
        if way == "union":
            shifted = labels[:, 1:]
            keep = (shifted != IGNORE).any(dim=0).nonzero().squeeze(-1)
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits.float()
            target = shifted[:, keep]
            loss = F.cross_entropy(logits.reshape(-1, vocab), target.reshape(-1), ignore_index=IGNORE)
            return loss, target.numel()
        return trainer.compute_loss(model, dict(batch)), int((labels[:, 1:] != IGNORE).sum())

    collate = PadCollator(tok.pad_token_id)
    bs = args.batch_size
    seconds: dict[str, list[float]] = {w: [] for w in WAYS}
    rows: dict[str, int] = {w: 0 for w in WAYS}
    peaks: dict[str, int] = {w: 0 for w in WAYS}
    losses: dict[str, list[float]] = {w: [] for w in WAYS}
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for b in range(args.batches + 1):
        chunk = examples[b * bs : (b + 1) * bs]
        batch = collate([{"input_ids": e.input_ids, "labels": e.labels} for e in chunk])
        batch = {k: v.to(device) for k, v in batch.items()}
        order = WAYS[b % 3 :] + WAYS[: b % 3]
        for way in order:
            model.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            sync()
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=setup.bf16):
                loss, n = loss_of(way, batch)
            loss.backward()
            sync()
            if b == 0:
                continue  # warm-up
            seconds[way].append(time.perf_counter() - start)
            rows[way] += n
            losses[way].append(loss.item())
            if cuda:
                peaks[way] = max(peaks[way], torch.cuda.max_memory_allocated())
    n = args.batches
    print(f"{model_ref.name}, {n} padded batches of {bs}, {setup.device}, vocabulary {vocab}")
    for way in WAYS:
        peak = f", peak {peaks[way] / 2**30:.2f} GiB" if cuda else ""
        print(
            f"  {way:8s} {rows[way] // n:6d} logit rows a batch, forward + backward "
            f"{statistics.median(seconds[way]):.3f} s (median){peak}"
        )
    # the same loss each way (the way tokens are averaged is the same: over supervised tokens)
    worst = max(abs(a - b) for way in ("full", "union") for a, b in zip(losses[way], losses["per row"]))
    goals = Goals()
    # measured 2.4e-7 in fp32 (EPYC) and under bf16 autocast (Xeon with AMX): summation order alone;
    # CUDA's bf16 kernels are unmeasured, so their bound is a first guess (bf16 rounds at 2^-8)
    bound = LOSS_BOUND["bf16" if setup.bf16 else "fp32"]
    print(
        f"  largest loss difference, per row vs full and union: {worst:.2e} "
        f"{goals.at_most('loss difference', worst, bound)}"
    )
    per_row = statistics.median(seconds["per row"])
    for other in ("full", "union"):
        ratio = statistics.median(seconds[other]) / per_row
        print(
            f"ratio step time {other} / per row: {ratio:.2f}x {goals.at_least(f'{other} / per row', ratio, 1, True)}"
        )
    print(f"ratio logit rows union / per row: {rows['union'] / rows['per row']:.2f}x")
    if cuda:
        print(f"ratio peak memory union / per row: {peaks['union'] / peaks['per row']:.2f}x")
    return goals.exit_code()


if __name__ == "__main__":
    sys.exit(main())
