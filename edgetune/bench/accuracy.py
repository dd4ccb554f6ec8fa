"""Accuracy of one runner on the held-out split: the task metric by greedy generation, perplexity
on the reference answers, and KL / top-1 agreement against the merged model's distributions."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgetune.bench.metrics import METRICS, reference_answer, unscorable_rows
from edgetune.bench.runners import Runner, greedy
from edgetune.data.render import IGNORE
from edgetune.data.rows import in_file_order
from edgetune.errors import InputError


def refuse_unscorable(metric: str, examples) -> None:
    """Before any model runs: a metric that cannot read the held-out answers would fail on the
    first one, or score every target 0 and make every gate meaningless. Every such row is counted,
    the first three named."""
    if rows := unscorable_rows(metric, examples):
        more = f" (and {len(rows) - 3} more held-out rows)" if len(rows) > 3 else ""
        raise InputError(f"{'; '.join(rows[:3])}{more}: fix or drop these rows, or pick another bench.metric")


def example_id(example) -> str:
    """A short, stable id of a held-out example's content: two reports pair scores on it."""
    return hashlib.sha256(example.key().encode("utf-8")).hexdigest()[:16]


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def kl_top1(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean KL(a || b) over positions, and top-1 agreement, of two [positions, vocab] log-probability
    arrays. A token `a` gives no probability (-inf, a masked vocabulary entry) adds nothing, as
    0 log 0 is 0 (the plain product is NaN there, and failed a model compared with itself). A
    position's KL is at least 0: the rounding of two near-equal distributions had shown an fp32
    export's KL as -3.8e-10, and merge's "KL to adapter" as -7.3e-09."""
    p = np.exp(a)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (a - b), 0.0)
    return float(np.maximum(terms.sum(-1), 0.0).mean()), float((a.argmax(-1) == b.argmax(-1)).mean())


def context_for(cases: list[Case], max_new_tokens: int, least: int = 2048) -> int:
    """The context a runtime with a fixed one (llama.cpp) needs for every case: its full ids for
    perplexity and KL, its prompt and the answer for generation."""
    longest = max((max(len(c.full_ids), len(c.prompt_ids) + max_new_tokens) for c in cases), default=0)
    return max(least, longest + 16)


@dataclass
class Case:
    """One held-out example as every target sees it."""

    prompt_ids: list[int]
    full_ids: list[int]
    labels: list[int]
    reference: str | None
    example: Any = field(default=None, compare=False, repr=False)  # the held-out example it came from

    @property
    def answered(self) -> bool:
        """Generated and scored: it has a prompt and a reference answer (a text row has neither)."""
        return self.reference is not None and bool(self.prompt_ids)


@dataclass
class Accuracy:
    metric: str
    value: float | None  # mean task metric over generated answers
    ppl: float | None
    kld_mean: float | None = None
    top1_agreement: float | None = None
    eos_rate: float = 0.0
    mean_output_tokens: float = 0.0
    examples: int = 0
    outputs: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    scores: list[float] = field(default_factory=list)  # per generated answer, in case order
    kl_scores: list[float] = field(default_factory=list)  # per example's mean KL, the first kl_examples


def build_cases(renderer, examples) -> list[Case]:
    cases = []
    for ex in examples:
        encoded = renderer.encode(ex)
        if encoded.dropped:
            continue
        prompt = renderer.ids_for_text(renderer.prompt_text(ex)) if ex.format != "text" else []
        cases.append(Case(prompt, encoded.input_ids, encoded.labels, reference_answer(ex), example=ex))
    return cases


def coverage_warnings(renderer, examples, cases: list[Case], max_new_tokens: int) -> list[str]:
    """What the score leaves out: held-out examples too long to encode (not scored, so the score
    leans to short ones), and reference answers longer than generation may run (every target is
    cut before their end, and bench.metric scores them low)."""
    said = []
    kept = {id(c.example) for c in cases}
    unscored = [ex.source for ex in in_file_order(examples) if id(ex) not in kept]
    if unscored:
        said.append(
            f"{len(unscored)} of {len(examples)} held-out examples are longer than data.max_seq_len "
            f"({renderer.max_seq_len} tokens) and not scored (e.g. {unscored[0]}): the score leans to short examples"
        )
    return said + ([cut] if (cut := cut_answers_warning(renderer, cases, max_new_tokens)) else [])


def cut_answers_warning(renderer, cases: list[Case], max_new_tokens: int) -> str | None:
    """Reference answers longer than bench.max_new_tokens: generation stops before their end."""
    lengths = [
        (n, c.example.source)
        for c in cases
        if c.answered
        and (n := len(renderer.tokenizer(c.reference, add_special_tokens=False)["input_ids"]))
        > max_new_tokens
    ]
    if not lengths:
        return None
    longest, where = max(lengths)
    return (
        f"{len(lengths)} of {sum(c.answered for c in cases)} reference answers are longer than "
        f"bench.max_new_tokens ({max_new_tokens}; the longest {longest} tokens, {where}): every target "
        "stops before their end and bench.metric scores them low; raise bench.max_new_tokens"
    )


def held_out_answers_warning(prepared, bench) -> str | None:
    """cut_answers_warning for the held-out rows bench will score (`bench`: the recipe's section),
    said before a tune rather than after it."""
    held_out = prepared.splits.held_out(bench.max_examples)
    return cut_answers_warning(
        prepared.renderer, build_cases(prepared.renderer, held_out), bench.max_new_tokens
    )


def evaluate(
    runner: Runner,
    cases: list[Case],
    metric: str,
    decode: Callable[[list[int]], str],
    eos_ids: list[int],
    max_new_tokens: int,
    reference: Sequence[np.ndarray] | None = None,
    progress: Callable[[], None] | None = None,
    perplexity: bool = True,
    keep: Callable[[int, np.ndarray], None] | None = None,
) -> Accuracy:
    """`keep(i, logprobs)` is handed each case's log-probabilities as they are computed (the
    reference target keeps them for the others' KL, so they are not computed twice)."""
    score = METRICS[metric]
    values, nll, counted, eos, lengths, outputs = [], 0.0, 0, 0, [], []
    kls, top1s = [], []
    started = time.perf_counter()
    for i, case in enumerate(cases):
        logprobs = log_softmax(runner.logits(case.full_ids)) if perplexity or keep else None
        if keep is not None:
            keep(i, logprobs)
        for pos, label in _supervised(case.labels) if perplexity else ():
            nll -= logprobs[pos - 1, label]
            counted += 1
        if perplexity and reference is not None and i < len(reference):
            # kept as float32, so renormalised: else an identical model's KL dips below 0
            a = log_softmax(reference[i])
            kl, top1 = kl_top1(a, logprobs)
            kls.append(kl)
            top1s.append(top1)
        if case.answered:
            tokens = greedy(runner, case.prompt_ids, eos_ids, max_new_tokens)
            stopped = bool(tokens) and tokens[-1] in eos_ids
            eos += stopped
            lengths.append(len(tokens) - stopped)  # the answer's tokens; the EOS is counted by eos_rate
            text = decode(tokens[:-1] if stopped else tokens)
            outputs.append(text)
            values.append(score(text, case.reference))
        if progress is not None:
            progress()
    return Accuracy(
        metric,
        float(np.mean(values)) if values else None,
        float(np.exp(nll / counted)) if counted else None,
        float(np.mean(kls)) if kls else None,
        float(np.mean(top1s)) if top1s else None,
        eos / len(lengths) if lengths else 0.0,
        float(np.mean(lengths)) if lengths else 0.0,
        len(cases),
        outputs,
        round(time.perf_counter() - started, 1),
        values,
        kls,
    )


def _supervised(labels: list[int]) -> Iterator[tuple[int, int]]:
    """(position, token) of every supervised token after the first position."""
    for pos, label in enumerate(labels):
        if label != IGNORE and pos > 0:
            yield pos, label
