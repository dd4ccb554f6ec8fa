"""Splits -> encoded ids and labels, with the statistics `edgetune data check` prints.

Nothing is dropped silently: every truncated or dropped example is counted, and the first few
dropped ones, and the first few whose learnt reply lost its EOS, are named by file:line.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from edgetune.config import DataConfig
from edgetune.data.render import Encoded, Renderer
from edgetune.data.rows import SKIP_ADVICE, Example
from edgetune.data.split import Splits, make_splits
from edgetune.errors import DataError, InputError


@dataclass
class LengthStats:
    count: int
    min: int
    mean: float
    p50: int
    p95: int
    max: int

    @staticmethod
    def of(lengths: list[int]) -> LengthStats:
        if not lengths:
            return LengthStats(0, 0, 0.0, 0, 0, 0)
        s = sorted(lengths)
        pct = lambda q: s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]  # noqa: E731 (nearest rank)
        return LengthStats(len(s), s[0], round(statistics.fmean(s), 1), pct(0.5), pct(0.95), s[-1])


@dataclass
class SplitEncoding:
    examples: list[Encoded]  # usable ones only
    lengths: LengthStats
    supervised_tokens: int
    truncated: int
    dropped: int
    dropped_examples: list[str] = field(default_factory=list)  # "file:line: reason", first few
    # usable examples with a learnt reply that does not end in a stop token (EOS): none supervised,
    # or truncation cut one off (in a chat, an earlier turn's EOS does not make up for the last's)
    missing_eos: int = 0
    missing_eos_examples: list[str] = field(default_factory=list)  # "file:line", first few


@dataclass
class PreparedData:
    splits: Splits
    renderer: Renderer
    encoded: dict[str, SplitEncoding]

    @property
    def template(self) -> str:
        """ "plain" where the rows reach the model as their own text, else whose chat template
        renders them: "model" or "fallback"."""
        if self.renderer.plain_prompts(self.splits.format):
            return "plain"
        return self.renderer.template_source

    @property
    def shipped_template(self) -> str | None:
        """The chat template a model trained on this data is saved with (adapter, merged model and
        every export): the plain one when its prompts went to it as they are, else the one used."""
        from edgetune.data.render import PLAIN_CHAT_TEMPLATE

        if self.renderer.plain_prompts(self.splits.format):
            return PLAIN_CHAT_TEMPLATE
        return self.renderer.tokenizer.chat_template

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (also recorded in run manifests)."""
        return {
            "format": self.splits.format,
            "files": self.splits.files,
            "counts": self.splits.counts(),
            "skipped_bad_rows": len(self.splits.skipped_rows),
            "unread_fields": self.splits.unread_fields,
            "duplicates_removed": self.splits.duplicates_removed,
            "overlap": self.splits.overlap,
            "overlap_examples": self.splits.overlap_pairs,
            "quality": asdict(self.splits.quality),
            "template": self.template,
            "splits": {
                # without its examples: asdict() would deep-copy every example's ids and labels (11 s at 50k rows)
                name: {k: v for k, v in asdict(replace(enc, examples=[])).items() if k != "examples"}
                for name, enc in self.encoded.items()
            },
        }


def _row_problem(renderer: Renderer, ex: Example, error: Exception) -> str:
    """One row's rendering failure as "file:line: why", saying where data.system_prompt put in
    the system turn the template refuses."""
    text = str(error)
    problem = text if text.startswith(ex.source) else f"{ex.source}: {text}"
    added = renderer.system_prompt and not any(m["role"] == "system" for m in ex.as_messages())
    if added and "system" in text.lower():
        problem += " (the system turn is data.system_prompt's)"
    return problem


PROGRESS_ROWS = 5000  # a split this long says how far its encoding is, each tenth of the way


def encode_split(
    renderer: Renderer,
    examples: list[Example],
    keep_reasons: int = 5,
    skip_bad_rows: bool = False,
    refused: list[tuple[Example, str]] | None = None,
    say: Callable[[str], None] | None = None,
    name: str = "",
) -> SplitEncoding:
    """`refused`: with skip_bad_rows, each row the chat template refuses, with why: a bad row,
    skipped as one that does not parse is, not an example counted among the dropped. `say`: where
    a long split's progress goes."""
    usable, lengths, reasons, no_eos = [], [], [], []
    truncated = dropped = missing_eos = 0
    step = max(1, len(examples) // 10) if say is not None and len(examples) >= PROGRESS_ROWS else 0
    for done, (ex, enc) in enumerate(zip(examples, renderer.encode_many(examples)), 1):
        if step and (done % step == 0 or done == len(examples)):
            say(f"data: {name} {done:,}/{len(examples):,} rows rendered and tokenised")
        if isinstance(enc, InputError):  # the chat template refuses this row (roles, a system turn)
            problem = _row_problem(renderer, ex, enc)
            if not skip_bad_rows:
                raise DataError(f"{problem} ({SKIP_ADVICE})") from None
            if refused is not None:
                refused.append((ex, problem))
            continue
        lengths.append(enc.length)
        if enc.dropped:
            dropped += 1
            if len(reasons) < keep_reasons:
                reasons.append(f"{enc.source}: {enc.dropped}")
            continue
        truncated += enc.truncated
        if enc.cut_reply or (renderer.stop_ids and renderer.stop_ids.isdisjoint(enc.labels)):
            missing_eos += 1
            if len(no_eos) < keep_reasons:
                no_eos.append(enc.source)
        usable.append(enc)
    return SplitEncoding(
        usable,
        LengthStats.of(lengths),
        sum(e.n_supervised for e in usable),
        truncated,
        dropped,
        reasons,
        missing_eos,
        no_eos,
    )


ALL_SPLITS = ("train", "valid", "test")


def prepare(
    cfg: DataConfig,
    tokenizer: Any,
    skip_bad_rows: bool | None = None,
    encode: tuple[str, ...] = ALL_SPLITS,
    say: Callable[[str], None] | None = None,
) -> PreparedData:
    """`encode`: the splits to render and tokenise (the others' encodings are empty). merge and
    bench need the held-out ones: at 50,000 training rows encoding those took a minute a stage.
    `say`: where a long split's progress goes (a minute at 50,000 rows)."""
    splits = make_splits(cfg, skip_bad_rows)
    if cfg.template == "plain" and any(ex.format == "messages" for ex in splits.train):
        raise DataError(
            f"{cfg.train}: data.template plain joins prompt and completion as they are; these rows are "
            "conversations, which need a chat template: use data.template auto or chat"
        )
    renderer = Renderer(tokenizer, cfg.template, cfg.system_prompt, cfg.max_seq_len, cfg.truncation)
    chats = any(renderer.uses_chat(ex) for ex in splits.train[:1])  # where data.system_prompt goes
    system = tokenizer(cfg.system_prompt, add_special_tokens=False)["input_ids"] if cfg.system_prompt else []
    if chats and (n := len(system)) >= cfg.max_seq_len:
        raise DataError(  # every row it goes into would be dropped, or cut to nothing to learn from
            f"data.system_prompt: {n} tokens, no shorter than data.max_seq_len {cfg.max_seq_len} alone; "
            "shorten it or raise data.max_seq_len"
        )
    skip = cfg.skip_bad_rows if skip_bad_rows is None else skip_bad_rows
    encoded = {}
    for name in ALL_SPLITS:
        refused: list[tuple[Example, str]] = []
        rows = getattr(splits, name) if name in encode else []
        encoded[name] = encode_split(renderer, rows, skip_bad_rows=skip, refused=refused, say=say, name=name)
        if refused:  # out of the split, as the rows that did not parse are: its counts are its rows
            gone = {id(ex) for ex, _ in refused}
            setattr(splits, name, [ex for ex in getattr(splits, name) if id(ex) not in gone])
            splits.skipped_rows += [problem for _, problem in refused]
    train = encoded["train"]
    if "train" not in encode:
        return PreparedData(splits, renderer, encoded)
    if not train.examples and not train.dropped_examples and splits.skipped_rows:
        raise DataError(
            f"{cfg.train}: every training row was skipped as bad (data.skip_bad_rows), e.g. "
            f"{splits.skipped_rows[0]}; fix the rows, or give the model a chat template that accepts them"
        )
    if not train.examples:  # data check, tune and every later stage agree that there is nothing to train on
        why = f", e.g. {train.dropped_examples[0]}" if train.dropped_examples else ""
        fix = "raise data.max_seq_len" + (
            ", or set data.truncation: truncate" if cfg.truncation == "drop" else ""
        )
        if train.dropped_examples and "data.max_seq_len" not in train.dropped_examples[0]:
            fix = "fix the rows, or give the model a chat template that accepts them"
        raise DataError(f"{cfg.train}: every training example was dropped{why}; {fix}")
    return PreparedData(splits, renderer, encoded)


def past_the_context(prepared: PreparedData, model_dir, trust_remote_code: bool = False) -> str | None:
    """A warning when encoded examples are longer than the model's positions: it would train (and,
    shipped, answer) where it learned nothing, and llama.cpp warns about it at every load."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None  # loading the model says what is wrong with its config
    positions = getattr(config.get_text_config(), "max_position_embeddings", None)
    longest = max((len(e.input_ids) for enc in prepared.encoded.values() for e in enc.examples), default=0)
    if not positions or longest <= positions:
        return None
    return (
        f"examples of up to {longest} tokens are longer than the model's {positions} positions "
        f"(max_position_embeddings): set data.max_seq_len to {positions} or less"
    )


def special_token_text(prepared: PreparedData) -> str | None:
    """A warning when rows (of any split) or data.system_prompt hold the text of one of the
    tokenizer's special tokens: the rendered example is tokenised whole, so the text becomes that
    token. A reply quoting <|im_end|> learns to stop there (a held-out one can never be generated
    whole); a prompt quoting a turn marker opens a turn of its own."""
    import re

    tokenizer = prepared.renderer.tokenizer
    specials = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special and t.content}
    if not specials:
        return None
    pattern = re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))
    found, splits = [], {}
    for name in ALL_SPLITS:
        for ex in getattr(prepared.splits, name):
            texts = [content for _, content in ex.messages] + [ex.prompt, ex.completion, ex.text]
            hit = next((m.group() for text in texts if text and (m := pattern.search(text))), None)
            if hit is not None:
                found.append(f"{ex.source}: {hit}")
                splits[name] = splits.get(name, 0) + 1
    said = []
    if found:
        rows = f"{len(found)} row" + ("s" if len(found) > 1 else "")
        where = ", ".join(f"{name} {n}" for name, n in splits.items())
        said.append(
            f"{rows} ({where}) hold{'s' * (len(found) == 1)} the text of a special token of the tokenizer (e.g. {found[0]}): it is "
            "read as that token, so a reply quoting one learns to end or open a turn there (and a held-out "
            "one cannot be generated whole); remove or spell it otherwise"
        )
    system = prepared.renderer.system_prompt
    if system and (m := pattern.search(system)):
        said.append(
            f"data.system_prompt holds the text of the special token {m.group()}: it is read as that token, "
            "ending or opening a turn in every chat it goes into"
        )
    return "; ".join(said) or None


def unused_system_prompt(prepared: PreparedData, system_prompt: str | None) -> str | None:
    """A warning when data.system_prompt goes nowhere: it is written into chat-rendered rows only."""
    if system_prompt and not any(prepared.renderer.uses_chat(e) for e in prepared.splits.train):
        return (
            "data.system_prompt is not used: it goes into chat-rendered rows, and these are rendered "
            "as plain text (text rows, or data.template plain)"
        )
    return None
