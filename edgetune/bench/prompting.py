""" "Prompt first" baselines: would a prompt on the base model have done the job?

Zero-shot: the base model on exactly the prompts the tuned model gets. Few-shot: k training
examples put in front of each test prompt as earlier turns of the same conversation (or, for
plain prompts, as the blocks training saw, each ending in the EOS), so the report can weigh the
tuned model's gain against what few-shot prompting costs in tokens on every request. The gain
gets a paired interval (bench/confidence.py): on 30 examples a few points can be the sample's.

The shots are the same for every test prompt: training rows in a seeded order, each with an answer
no earlier shot has where the data has enough (the first rows of a file sorted by answer were k
shots of one label), and only rows training used whole (a row dropped as too long, or one the chat
template refused, is no example of the task) whose turns alternate from a user's, so that chained
they still do (Llama 2's and Mistral's templates refuse anything else).
"""

from __future__ import annotations

import random
import statistics
from dataclasses import replace
from typing import Any

from edgetune.bench.accuracy import Case
from edgetune.bench.metrics import reference_answer
from edgetune.errors import InputError

# rows looked at for shots: a task with fewer answers than k takes the rest from those looked at,
# and a file whose rows mostly cannot be shots is not encoded whole
SHOT_CANDIDATES = 500


def pick_shots(renderer, train, k: int, seed: int) -> list:
    """`k` training rows to prompt with (see the module)."""
    order = [ex for ex in train if ex.format != "text"]
    random.Random(seed).shuffle(order)
    picked, spare, answers = [], [], set()
    for ex in order[:SHOT_CANDIDATES]:
        if len(picked) == k:
            break
        if not _a_turn_each(renderer, ex) or not _trained_whole(renderer, ex):
            continue
        answer = reference_answer(ex)
        (spare if answer in answers else picked).append(ex)
        answers.add(answer)
    return picked + spare[: k - len(picked)]


def shot_turns(renderer, shot) -> list[dict[str, str]]:
    """A shot as turns of the conversation: its own up to its scored reply, then that reply
    (its system turn is the test row's; a reply of weight 0 after it is not the example)."""
    asked = [m for m in renderer.prompt_messages(shot) if m["role"] != "system"]
    return [*asked, {"role": "assistant", "content": shot.reference()}]


def _a_turn_each(renderer, ex) -> bool:
    """User and assistant turns in turn, the user's first: chained, shots then keep the turns
    alternating, as Llama 2's and Mistral's templates require (they refuse anything else)."""
    if not renderer.uses_chat(ex):
        return True
    roles = [m["role"] for m in shot_turns(renderer, ex)]
    return all(role == ("user", "assistant")[i % 2] for i, role in enumerate(roles))


def _trained_whole(renderer, ex) -> bool:
    try:
        encoded = renderer.encode(ex)
    except InputError:  # the chat template refuses it (DataError too)
        return False
    return encoded.dropped is None and not encoded.truncated


def few_shot_cases(renderer, shots, cases: list[Case]) -> list[Case]:
    """`cases` with the shots' turns prepended to every prompt (each case carries its example: a
    pairing by position would shift once build_cases has dropped one)."""
    out = []
    for case in cases:
        if case.reference is None or not case.prompt_ids:
            continue
        ex = case.example
        if renderer.uses_chat(ex):
            before = renderer.prompt_messages(ex)  # up to the reply scored, which no shot may show
            head = before[:1] if before[0]["role"] == "system" else []
            turns = [m for shot in shots for m in shot_turns(renderer, shot)]
            text = renderer.chat_text(head + turns + before[len(head) :], add_generation_prompt=True)
        else:  # each shot as training saw it: prompt, answer and EOS, so the base model may stop too
            text = "\n\n".join([*(renderer.spans(s)[0] for s in shots), renderer.prompt_text(ex)])
        out.append(replace(case, prompt_ids=renderer.ids_for_text(text)))
    return out


def prompting_baselines(
    base, base_runner, prepared, cases, cfg, run_accuracy, tuned, seed: int, warn
) -> dict[str, Any]:
    """Zero- and few-shot prompting of the base model on the first `baseline_examples` held-out
    examples, with the tuned model's score on exactly those examples beside them; `seed` orders
    the training rows the shots are taken from."""
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
    shots = pick_shots(prepared.renderer, prepared.splits.train, cfg.few_shot_k, seed)
    try:
        shot_cases = few_shot_cases(prepared.renderer, shots, cases) if shots else []
    except InputError as e:  # the template refuses the chained conversation: no baseline, not no bench
        warn(f"no few-shot baseline: the chat template refuses the shots put before a test prompt ({e})")
        shots, shot_cases = [], []
    context = getattr(base_runner, "context", None)
    longest = max((len(c.prompt_ids) for c in shot_cases), default=0) + cfg.max_new_tokens
    if context and longest > context:  # the base model would answer past the positions it knows
        warn(
            f"no few-shot baseline: {len(shots)} shots make prompts of up to {longest - cfg.max_new_tokens} "
            f"tokens, and with bench.max_new_tokens {cfg.max_new_tokens} they pass the base model's "
            f"{context} positions; lower bench.few_shot_k"
        )
        shots = []
    if shots:
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
