"""Signs of noisy training data that exact de-duplication does not catch.

- Conflicting answers: one input (after folding case and whitespace) with more than one answer.
  The model learns their average, or a coin toss between them; for a format or extraction task it
  is label noise, for an open-ended task it may be intended.
- Near duplicates: rows equal to an earlier row once case and whitespace are folded. They weigh
  that example twice, as exact duplicates would, but de-duplication keeps them.

Neither is removed: what is noise depends on the task, so both are counted and named (file:line)
for `edgetune data check` and as warnings before a tune.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field

from edgetune.data.rows import Example

SHOWN = 5  # examples named per finding


def counted(n: int, noun: str) -> str:
    """'1 input', '3 inputs'."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _fold(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


def folded_input(ex: Example, turns: tuple[tuple[str, str], ...] | None = None) -> str:
    """The input side (or `turns`, one of ex.reply_inputs()) with case and whitespace folded (a
    text row's whole text): what leakage into a held-out split is matched on."""
    key = _input(ex, turns)
    return _fold(ex.text) if key is None else key


def _input(ex: Example, turns: tuple[tuple[str, str], ...] | None = None) -> str | None:
    """The folded input side; None for text rows, which have no separate answer."""
    turns = ex.input_turns() if turns is None else turns
    return None if turns is None else json.dumps([ex.format, [[r, _fold(c)] for r, c in turns]])


def _folded(ex: Example) -> str:
    return json.dumps(
        [
            ex.format,
            [[r, _fold(c)] for r, c in ex.messages],
            _fold(ex.prompt),
            _fold(ex.completion),
            _fold(ex.text),
        ]
    )


@dataclass
class Quality:
    conflicting_inputs: int = 0  # inputs with more than one (folded) answer
    conflicting_examples: int = 0  # the examples those inputs appear in
    conflicts: list[str] = field(default_factory=list)  # per input, where its first answers are
    near_duplicates: int = 0  # rows equal to an earlier row up to case and whitespace, not exactly
    near_duplicate_pairs: list[str] = field(default_factory=list)  # "file:line repeats file:line"

    def warnings(self, split: str = "train") -> list[str]:
        found = []
        if self.conflicting_inputs:
            found.append(
                f"{counted(self.conflicting_inputs, split + ' input')} with more than one answer "
                f"({self.conflicting_examples} examples, e.g. {self.conflicts[0]}): "
                "the model learns to mix them; keep one answer per input unless the variety is intended"
            )
        if self.near_duplicates:
            found.append(
                f"{counted(self.near_duplicates, split + ' example')} repeating another up to case and whitespace "
                f"(e.g. {self.near_duplicate_pairs[0]}); they count twice in training"
            )
        return found


def assess(examples: list[Example]) -> Quality:
    by_input: dict[str, dict[str, list[str]]] = {}  # folded input -> folded example -> its sources
    first_seen: dict[str, Example] = {}
    quality = Quality()
    for ex in examples:
        folded = _folded(ex)
        earlier = first_seen.setdefault(folded, ex)
        if earlier is not ex and earlier.match_key() != ex.match_key():
            quality.near_duplicates += 1
            if len(quality.near_duplicate_pairs) < SHOWN:
                quality.near_duplicate_pairs.append(f"{ex.source} repeats {earlier.source}")
        key = _input(ex)
        if key is not None:
            by_input.setdefault(key, {}).setdefault(folded, []).append(ex.source)
    for variants in by_input.values():
        if len(variants) > 1:
            quality.conflicting_inputs += 1
            quality.conflicting_examples += sum(map(len, variants.values()))
            if len(quality.conflicts) < SHOWN:
                quality.conflicts.append(", ".join(sources[0] for sources in list(variants.values())[:3]))
    return quality
