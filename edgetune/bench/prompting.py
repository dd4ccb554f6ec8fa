""" "Prompt first" baselines: would a prompt on the base model have done the job?

Zero-shot: the base model on exactly the prompts the tuned model gets. Few-shot: the first k
training examples put in front of each test prompt as earlier turns of the same conversation (or
as plain prompt+answer blocks for models without a chat template), so the report can weigh the
tuned model's gain against what few-shot prompting costs in tokens on every request. The gain
gets a paired interval (bench/confidence.py): on 30 examples a few points can be the sample's.
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Any

from edgetune.bench.accuracy import Case
from edgetune.bench.metrics import reference_answer


def few_shot_cases(renderer, shots, cases: list[Case]) -> list[Case]:
    """`cases` with the shots' turns prepended to every prompt (each case carries its example: a
    pairing by position would shift once build_cases has dropped one)."""
    out = []
    for case in cases:
        if case.reference is None or not case.prompt_ids:
            continue
        ex = case.example
        if renderer.uses_chat(ex):
            messages = renderer.conversation(ex)
            head = messages[:1] if messages[0]["role"] == "system" else []
            body = messages[len(head) :]
            last = max(i for i, m in enumerate(body) if m["role"] == "assistant")
            turns = [m for shot in shots for m in shot.as_messages() if m["role"] != "system"]
            text = renderer.chat_text(head + turns + body[:last], add_generation_prompt=True)
        else:
            blocks = [renderer.prompt_text(s) + (reference_answer(s) or "") for s in shots]
            text = "\n\n".join([*blocks, renderer.prompt_text(ex)])
        out.append(replace(case, prompt_ids=renderer.ids_for_text(text)))
    return out


def prompting_baselines(base, base_runner, prepared, cases, cfg, run_accuracy, tuned) -> dict[str, Any]:
    """Zero- and few-shot prompting of the base model on the first `baseline_examples` held-out
    examples, with the tuned model's score on exactly those examples beside them."""
    n = cfg.baseline_examples or len(cases)
    cases = cases[:n]
    answered = sum(1 for c in cases if c.answered)
    same = tuned.scores[:answered]
    common = {"examples": answered, "tuned_on_these": float(statistics.mean(same)) if same else None}
    out: dict[str, Any] = {}
    zero, _ = run_accuracy(base, target_cases=cases, runner=base_runner)
    out["zero_shot"] = {
        "task_metric": {"name": cfg.metric, "value": zero.value},
        "ppl": zero.ppl,
        "eos_rate": zero.eos_rate,
        "wall_s": zero.wall_s,
        "sample_outputs": zero.outputs[:3],
    }
    shots = [ex for ex in prepared.splits.train if ex.format != "text"][: cfg.few_shot_k]
    if shots:
        shot_cases = few_shot_cases(prepared.renderer, shots, cases)
        few, _ = run_accuracy(base, target_cases=shot_cases, perplexity=False, runner=base_runner)
        extra = statistics.mean(
            len(s.prompt_ids) - len(c.prompt_ids)
            for s, c in zip(shot_cases, [c for c in cases if c.answered])
        )
        out[f"few_shot_{len(shots)}"] = {
            "task_metric": {"name": cfg.metric, "value": few.value},
            "extra_prompt_tokens": extra,
            "eos_rate": few.eos_rate,
            "wall_s": few.wall_s,
            "sample_outputs": few.outputs[:3],
        }
    for entry, baseline in zip(out.values(), (zero, *([few] if shots else []))):
        entry.update(common)
        entry["scores"] = baseline.scores  # per example, paired with the tuned model's first ones
    return out
