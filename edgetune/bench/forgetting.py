"""Forgetting: what the tune cost the model in general ability, measured against its base.

Two probes, both small and bundled: (1) the base model answers general prompts greedily, and
KL(base || tuned) is averaged over the positions of those answers (how far the tuned model moved
away from what the base would say, on the base's own text); (2) perplexity of both models on
short general-English passages. A tune that only specialised leaves both near the base.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgetune.bench.accuracy import kl_top1, log_softmax
from edgetune.bench.runners import Runner, greedy

GENERAL_PROMPTS = [
    "Explain in two sentences why the sky looks blue during the day.",
    "Give three tips for writing a clear email to a colleague.",
    "What is the difference between weather and climate?",
    "Write a short, friendly reply declining an invitation to dinner.",
    "How does a refrigerator keep food cold?",
    "Summarise the plot of a fairy tale you know in three sentences.",
    "List four healthy breakfast ideas.",
    "Why do we have leap years?",
]

GENERAL_PASSAGES = [
    "The library opens at nine in the morning and closes at six in the evening. Visitors can borrow up "
    "to five books at a time, and most loans last three weeks.",
    "Bread is made by mixing flour, water, salt and yeast. The dough is kneaded, left to rise, shaped, "
    "and then baked in a hot oven until the crust turns golden brown.",
    "Rivers carry water from high ground to the sea. Along the way they shape valleys, carry sediment "
    "and provide water for farms, towns and wildlife.",
    "A good night's sleep helps the body recover and the mind stay focused. Most adults need between "
    "seven and nine hours of sleep each night.",
    "The train to the coast leaves every hour. Passengers are asked to buy tickets before boarding and "
    "to keep their luggage out of the aisle.",
    "Photosynthesis is the process by which plants use sunlight, water and carbon dioxide to make sugar, "
    "releasing oxygen into the air as a by-product.",
]


@dataclass
class Forgetting:
    kl_base_tuned: float  # mean over positions of the base model's own answers
    ppl_base: float
    ppl_tuned: float
    prompts: int
    passages: int

    @property
    def ppl_ratio(self) -> float:
        return self.ppl_tuned / self.ppl_base


def _perplexity(runner: Runner, sequences: list[list[int]]) -> float:
    nll, count = 0.0, 0
    for ids in sequences:
        logprobs = log_softmax(runner.logits(ids))
        nll -= sum(logprobs[i - 1, ids[i]] for i in range(1, len(ids)))
        count += len(ids) - 1
    return float(np.exp(nll / count))


def measure_forgetting(
    base: Runner, tuned: Runner, renderer, eos_ids: list[int], answer_tokens: int = 48
) -> Forgetting:
    kls = []
    for prompt in GENERAL_PROMPTS:
        if renderer.template == "plain" or not renderer.tokenizer.chat_template:
            text = prompt + "\n"
        else:
            text = renderer.chat_text([{"role": "user", "content": prompt}], add_generation_prompt=True)
        ids = renderer.ids_for_text(text)
        answer = greedy(base, ids, eos_ids, answer_tokens)
        full = ids + answer
        a = log_softmax(base.logits(full))[len(ids) - 1 : -1]
        b = log_softmax(tuned.logits(full))[len(ids) - 1 : -1]
        kls.append(kl_top1(a, b)[0])
    passages = [renderer.ids_for_text(p) for p in GENERAL_PASSAGES]
    return Forgetting(
        float(np.mean(kls)),
        _perplexity(base, passages),
        _perplexity(tuned, passages),
        len(GENERAL_PROMPTS),
        len(passages),
    )
