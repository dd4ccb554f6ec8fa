""" "Prompt first" baselines: would a prompt on the base model have done the job?

Zero-shot: the base model on exactly the prompts the tuned model gets. Few-shot: k training
examples put in front of each test prompt as earlier turns of the same conversation (or, for
plain prompts, as the blocks training saw, each ending in the EOS), so the report can weigh the
tuned model's gain against what few-shot prompting costs in tokens on every request. The gain
gets a paired interval (bench/confidence.py): on 30 examples a few points can be the sample's.

Two few-shot baselines, of k shots each. The fixed one puts the same shots before every test prompt
(one prompt to ship, its prefix cached): training rows in a seeded order, each with an answer no
earlier shot has where the data has enough (the first rows of a file sorted by answer were k shots
of one label). The similar one puts before each test prompt the training rows most like it (BM25
over the words asked, the most similar nearest the question), the dynamic few-shot prompting a
retrieval step gives: on a task whose answers follow the wording of the input, a far stronger
prompt, and so the fairer question whether fine-tuning was needed. Either takes only rows training
used whole (a row dropped as too long, or one the chat template refused, is no example of the task)
whose turns alternate from a user's, so that chained they still do (Llama 2's and Mistral's
templates refuse anything else).
"""

from __future__ import annotations

import random
import re
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


class SimilarShots:
    """The usable training rows most like a test prompt, by BM25 over the words each asks."""

    def __init__(self, renderer, train) -> None:
        from rank_bm25 import BM25Plus

        self.renderer = renderer
        self.rows = [ex for ex in train if ex.format != "text"]
        self.asked = [_asked(renderer, ex) for ex in self.rows]
        words = [_words(text) for text in self.asked]
        self.index = BM25Plus(words) if any(words) else None  # BM25 divides by the mean length
        self.usable: dict[int, bool] = {}

    def nearest(self, ex, k: int) -> list:
        """Up to `k` rows, the most similar last (nearest the question); ties in file order. None
        (an empty list) where no row that may be its shot is more like it than the rest (no word
        in common: BM25 would give the first rows of the file), and never a row asking what `ex`
        asks, up to case, spacing and punctuation (its own answer)."""
        import numpy as np

        if self.index is None or k == 0:
            return []
        words = _words(_asked(self.renderer, ex))
        scores = self.index.get_scores(words)
        floor, picked = scores.min(), []
        for i in np.argsort(-scores, kind="stable")[:SHOT_CANDIDATES].tolist():
            if _words(self.asked[i]) == words:
                continue
            if i not in self.usable:
                row = self.rows[i]
                self.usable[i] = _a_turn_each(self.renderer, row) and _trained_whole(self.renderer, row)
            if self.usable[i]:
                if not picked and scores[i] == floor:  # the best that may be a shot shares no word
                    return []
                picked.append(self.rows[i])
                if len(picked) == k:
                    break
        return picked[::-1]


def _asked(renderer, ex) -> str:
    """What a row asks: its prompt, or its turns before the reply scored (not its system turn,
    which every row of a task shares)."""
    if not renderer.uses_chat(ex):
        return ex.prompt
    return "\n".join(m["content"] for m in shot_turns(renderer, ex)[:-1])


# scripts written without spaces between words (Thai, Chinese, Japanese kana and kanji): each
# character is a word, or a whole clause would be one and match nothing
UNSPACED = "\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
WORD = re.compile(rf"[{UNSPACED}]|[^\W{UNSPACED}]+")


def _words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def few_shot_cases(renderer, shots, cases: list[Case]) -> list[Case]:
    """`cases` with shots' turns prepended to every prompt: `shots` the same rows for every case, or
    a function giving a case its own (each case carries its example: a pairing by position would
    shift once build_cases has dropped one)."""
    out = []
    for case in cases:
        if case.reference is None or not case.prompt_ids:
            continue
        ex, shown = case.example, shots(case) if callable(shots) else shots
        if renderer.uses_chat(ex):
            before = renderer.prompt_messages(ex)  # up to the reply scored, which no shot may show
            head = before[:1] if before[0]["role"] == "system" else []
            turns = [m for shot in shown for m in shot_turns(renderer, shot)]
            text = renderer.chat_text(head + turns + before[len(head) :], add_generation_prompt=True)
        else:  # each shot as training saw it: prompt, answer and EOS, so the base model may stop too
            text = "\n\n".join([*(renderer.spans(s)[0] for s in shown), renderer.prompt_text(ex)])
        out.append(replace(case, prompt_ids=renderer.ids_for_text(text)))
    return out


def prompting_baselines(
    base, base_runner, prepared, cases, cfg, run_accuracy, tuned, seed: int, warn
) -> dict[str, Any]:
    """Zero- and few-shot prompting of the base model on the first `baseline_examples` held-out
    examples, with the tuned model's score on exactly those examples beside them; `seed` orders
    the training rows the fixed shots are taken from."""
    n = cfg.baseline_examples or len(cases)
    cases = cases[:n]
    answered = sum(1 for c in cases if c.answered)
    same = tuned.scores[:answered]
    common = {"examples": answered, "tuned_on_these": float(statistics.mean(same)) if same else None}
    zero, _ = run_accuracy(base, target_cases=cases, runner=base_runner)
    out: dict[str, Any] = {
        "zero_shot": {
            "task_metric": {"name": cfg.metric, "value": zero.value},
            "ppl": zero.ppl,
            "eos_rate": zero.eos_rate,
            "wall_s": zero.wall_s,
            "sample_outputs": zero.outputs[:3],
            **common,
            "scores": zero.scores,  # per example, paired with the tuned model's first ones
        }
    }
    renderer, train = prepared.renderer, prepared.splits.train
    fixed = pick_shots(renderer, train, cfg.few_shot_k, seed)
    variants = [(f"few_shot_{len(fixed)}", "few-shot", fixed)] if fixed else []
    if fixed and cfg.few_shot_similar:
        index = SimilarShots(renderer, train)
        # a prompt no row is more like than another takes the fixed shots
        found = {id(c): index.nearest(c.example, cfg.few_shot_k) for c in cases if c.answered}
        own = {key: shots or fixed for key, shots in found.items()}
        k = max(map(len, own.values()), default=len(fixed))
        if any(found.values()):
            variants.append((f"similar_shot_{k}", "similar-shot", lambda case: own[id(case)]))
        else:  # every prompt would take the fixed shots: the same baseline run twice
            warn(
                "no similar-shot baseline: no test prompt shares a word with a training row that may be a shot"
            )
    for name, label, shots in variants:
        shot_cases = _shot_cases(renderer, shots, cases, base_runner, cfg, label, warn)
        if not shot_cases:
            continue
        few, _ = run_accuracy(base, target_cases=shot_cases, perplexity=False, runner=base_runner)
        extra = statistics.mean(
            len(s.prompt_ids) - len(c.prompt_ids)
            for s, c in zip(shot_cases, [c for c in cases if c.answered])
        )
        out[name] = {
            "task_metric": {"name": cfg.metric, "value": few.value},
            "extra_prompt_tokens": extra,
            "eos_rate": few.eos_rate,
            "wall_s": few.wall_s,
            "sample_outputs": few.outputs[:3],
            **common,
            "scores": few.scores,
        }
    return out


def _shot_cases(renderer, shots, cases, base_runner, cfg, label: str, warn) -> list[Case]:
    """The cases with their shots, or none (said) where the template refuses the chained turns or
    the prompts pass the base model's positions."""
    try:
        shot_cases = few_shot_cases(renderer, shots, cases)
    except InputError as e:  # the template refuses the chained conversation: no baseline, not no bench
        warn(f"no {label} baseline: the chat template refuses the shots put before a test prompt ({e})")
        return []
    context = getattr(base_runner, "context", None)
    longest = max((len(c.prompt_ids) for c in shot_cases), default=0) + cfg.max_new_tokens
    if context and longest > context:  # the base model would answer past the positions it knows
        k = len(shots) if not callable(shots) else cfg.few_shot_k
        warn(
            f"no {label} baseline: {k} shots make prompts of up to {longest - cfg.max_new_tokens} "
            f"tokens, and with bench.max_new_tokens {cfg.max_new_tokens} they pass the base model's "
            f"{context} positions; lower bench.few_shot_k"
        )
        return []
    return shot_cases
