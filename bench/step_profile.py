#!/usr/bin/env python3
"""Where a training step's time goes: edgetune's Trainer, as `edgetune tune` builds it, on one model.

    python bench/step_profile.py --recipe R.yaml --method lora|qlora [--precision bf16]
                                 [--checkpointing on|off] --out FILE.json

Per-step wall times with the device synchronised at each step's begin and end (so a step's time is
its kernels', not their launch), split into the step itself (forward, backward, optimizer) and what
runs between steps (logging, callbacks, the next batch), then torch.profiler's operators over a few
steady steps: the top ones by device time and by host time, and how busy the device was.

The GPU check runs it for both methods after its QLoRA/LoRA step: on the first H200 run a step of
a 1.1 B model took about a second for ~1,300 tokens, some 50x its matrix work, and this says whether
that was warm-up, the host or the kernels.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

WARMUP_STEPS = 3  # as in gpu_check.py: the steps that pay for kernel selection and the allocator
TIMED_STEPS = 4  # unprofiled, for the step times
PROFILED_STEPS = 3  # after one profiler warm-up step
TOP = 10


def _device_us(event) -> float:
    """An operator's own device time in µs (the attribute's name changed in torch 2.4)."""
    value = getattr(event, "self_device_time_total", None)
    if value is None:
        value = getattr(event, "self_cuda_time_total", 0.0)
    return float(value or 0.0)


def _is_kernel(event) -> bool:
    """A device-side row (a kernel, a copy): its launching operator's row counts its time too. Not
    the device-side copies of annotations (ProfilerStep#N, Optimizer.step): they span whole
    stretches of the timeline, idle time included."""
    on_device = getattr(event.device_type, "name", "CPU") != "CPU"
    return on_device and not getattr(event, "is_user_annotation", False)


# rows that are this script's own measuring, not the training step's work: the synchronisation at
# each step's begin and end (its host time is the wait for the device) and the profiler's markers
OURS = ("cudaDeviceSynchronize", "ProfilerStep")


def _top(averages, key, steps: int) -> list[dict]:
    """The operators (host-side rows: their own device time is that of the kernels they launched)."""
    ops = [e for e in averages if not _is_kernel(e) and not e.key.startswith(OURS)]
    rows = sorted(ops, key=key, reverse=True)[:TOP]
    return [
        {
            "op": e.key,
            "calls_per_step": round(e.count / steps, 1),
            "host_ms_per_step": round(e.self_cpu_time_total / 1000 / steps, 2),
            "device_ms_per_step": round(_device_us(e) / 1000 / steps, 2),
        }
        for e in rows
        if key(e) > 0
    ]


def profile_steps(
    recipe_path: Path,
    method: str,
    precision: str,
    checkpointing: bool,
    timed_steps: int = TIMED_STEPS,
    profiled_steps: int = PROFILED_STEPS,
) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, schedule
    from transformers import TrainerCallback

    from edgetune.config import load_recipe
    from edgetune.data.prepare import prepare
    from edgetune.models import ResolvedModel, load_tokenizer
    from edgetune.tune.model import choose_setup, load_for_training
    from edgetune.tune.run import tune_callbacks
    from edgetune.tune.trainer import build_trainer, training_args

    recipe = load_recipe(str(recipe_path))
    steps = WARMUP_STEPS + timed_steps + 1 + profiled_steps
    recipe.train.max_steps = steps
    recipe.train.save_steps = recipe.train.eval_steps = 10 * steps
    model_dir = Path(recipe.model.base)
    ref = ResolvedModel(str(model_dir), model_dir, "local")
    tokenizer = load_tokenizer(ref)
    examples = prepare(recipe.data, tokenizer).encoded["train"].examples
    setup = choose_setup(method, precision)
    cuda = setup.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    profiler = torch.profiler.profile(
        activities=activities,
        schedule=schedule(wait=WARMUP_STEPS + timed_steps, warmup=1, active=profiled_steps, repeat=1),
    )
    marks: dict[str, list[float]] = {"begin": [], "end": []}
    tokens: list[int] = []

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            sync()
            marks["end"].append(time.perf_counter())  # the first step's cycle starts here
            tokens.append(state.num_input_tokens_seen)
            profiler.start()

        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            marks["begin"].append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            marks["end"].append(time.perf_counter())
            profiler.step()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:  # tokens are counted once the step's batch is in
                tokens.append(state.num_input_tokens_seen)

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        args = training_args(recipe, run_dir, setup, has_valid=False)
        model = load_for_training(ref, setup, recipe.train.lora, gradient_checkpointing=checkpointing)
        callbacks = [*tune_callbacks(recipe, run_dir, False, lambda message: None, None), StepClock()]
        trainer = build_trainer(recipe, args, model, tokenizer, examples, [], callbacks)
        trainer.train()
        profiler.stop()
    begin, end = marks["begin"], marks["end"]
    cycle = [b - a for a, b in zip(end, end[1:])]  # step end to step end: the step and what follows it
    inside = [e - b for b, e in zip(begin, end[1:])]  # step begin to end: forward, backward, optimizer
    timed = slice(WARMUP_STEPS, WARMUP_STEPS + timed_steps)
    per_step_tokens = [b - a for a, b in zip(tokens, tokens[1:])]
    averages = profiler.key_averages()
    device_ms = (
        sum(_device_us(e) for e in averages if _is_kernel(e)) / 1000 / profiled_steps if cuda else None
    )
    steady = statistics.median(cycle[timed])
    return {
        "method": setup.method,
        "device": setup.device,
        "gradient_checkpointing": checkpointing,
        "steps": len(cycle),
        "first_step_s": round(cycle[0], 3),
        "steady_step_s": round(steady, 4),
        "steady_in_step_s": round(statistics.median(inside[timed]), 4),
        "steady_between_steps_s": round(steady - statistics.median(inside[timed]), 4),
        "tokens_per_step": round(statistics.mean(per_step_tokens[timed]), 1) if per_step_tokens else None,
        "step_s": [round(c, 4) for c in cycle],
        # the sum of every operator's own device time: where it is far below the step's time the
        # device waited on the host
        "device_busy_ms_per_step": round(device_ms, 2) if device_ms is not None else None,
        "top_by_device": _top(averages, _device_us, profiled_steps) if cuda else [],
        "top_by_host": _top(averages, lambda e: e.self_cpu_time_total, profiled_steps),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--recipe", type=Path, required=True, help="its model.base is a local model directory"
    )
    parser.add_argument("--method", choices=["lora", "qlora"], required=True)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--checkpointing", choices=["on", "off"], default="on")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--timed-steps", type=int, default=TIMED_STEPS, help="after the warm-up, unprofiled")
    parser.add_argument("--profiled-steps", type=int, default=PROFILED_STEPS)
    args = parser.parse_args()
    if args.timed_steps < 1 or args.profiled_steps < 1:
        parser.error("--timed-steps and --profiled-steps must be >= 1")
    import transformers

    transformers.logging.set_verbosity_error()
    result = profile_steps(args.recipe, args.method, args.precision, args.checkpointing == "on",
                           args.timed_steps, args.profiled_steps)  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{result['method']} on {result['device']}: first step {result['first_step_s']} s, steady "
        f"{result['steady_step_s']} s ({result['steady_in_step_s']} s in the step), "
        f"device busy {result['device_busy_ms_per_step']} ms a step"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
