"""Rendering examples into token ids and loss labels.

The text is rendered once through the model's chat template (or our stated fallback), tokenised
once with character offsets, and a token is supervised when it starts inside an assistant turn's
character span. Rendering once and masking by offsets means the ids we train on are exactly the
ids inference will see for the same conversation, with no boundary effects between pieces.

Labels are built here, not by a collator that masks pad tokens, so the EOS token stays
supervised even for models whose pad token is their EOS token.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune.data.fields import learnt_reply
from edgetune.data.rows import Example
from edgetune.errors import DataError, InputError, ModelError

IGNORE = -100

# For base models without a chat template. Plain-text markers, so no new tokens are needed; the
# template is saved with the adapter and the merged model, and exported with them.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### User:\n{{ message['content'] }}\n\n"
    "{% else %}### Assistant:\n{{ message['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)


# What a model trained on plain prompts ships as its chat template (Renderer.plain_prompts): the last
# message as it is, alone, as it went to the model in training and as `edgetune chat` sends it.
# Front-ends that apply a file's template (llama-server's chat endpoint, llama-cpp-python,
# transformers' apply_chat_template) then prompt it as it learned, not in its base's chat format.
PLAIN_CHAT_TEMPLATE = "{%- if messages %}{{ messages[-1]['content'] }}{% endif -%}"


def _answer_start(spans: list[tuple[int, int]]) -> int:
    """Where the last reply, the one inference is asked for, begins."""
    return max((s for s, _ in spans), default=0)


def stop_ids(model_dir: Path, tokenizer) -> list[int]:
    """The ids a reply ends with: generation_config's EOS ids, the tokenizer's EOS and the token
    the chat template closes a reply with. They differ for chat models whose turns end in their own
    token: Gemma's end in <end_of_turn>, its tokenizer's EOS is <eos>; and a base model whose
    generation_config knows only its EOS (Qwen2.5's base: <|endoftext|>) learns to end its replies
    in its template's <|im_end|>."""
    from transformers import GenerationConfig

    try:
        gen_eos = GenerationConfig.from_pretrained(str(model_dir)).eos_token_id
    except OSError:
        gen_eos = None
    ids = {*([gen_eos] if isinstance(gen_eos, int) else (gen_eos or [])), tokenizer.eos_token_id}
    return sorted((ids | {template_turn_end(tokenizer)}) - {None})


def template_turn_end(tokenizer) -> int | None:
    """The special token the chat template writes right after a reply's text (ChatML's
    <|im_end|>, Llama 3's <|eot_id|>, Gemma's <end_of_turn>), which the reply's labels train the
    model to write; None for a template that writes none there (or none at all)."""
    from edgetune.templating import apply_chat_template

    mark = "edgetune reply end probe"
    user, reply, system = (
        {"role": r, "content": c} for r, c in (("user", "hi"), ("assistant", mark), ("system", "be brief"))
    )
    # a template may want a system turn, or leave the last reply open: the reply in the history then
    tries = ([user, reply], [system, user, reply], [user, reply, user], [system, user, reply, user])
    specials = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    for conversation in tries:
        try:
            text = apply_chat_template(tokenizer, conversation, add_generation_prompt=False)
        except Exception:  # no template, or one that wants other turns
            continue
        at = text.find(mark)
        if at < 0:
            continue
        # a newline before the token ("...\n<|im_end|>") is written, then the turn ends in the token
        after = tokenizer(text[at + len(mark) :].lstrip(), add_special_tokens=False)["input_ids"]
        if after and after[0] in specials:
            return after[0]
    return None


def reply_text(tokenizer, ids: list[int]) -> str:
    """Generated ids as the text the model wrote: without special tokens, and without the
    "clean-up" some tokenizers ship switched on, which rewrites "Paris , France" as "Paris,
    France" (a metric would then score text the model never produced, and a chat history would
    hold it)."""
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    source: str
    length: int = 0  # tokens before any truncation
    truncated: bool = False
    cut_reply: bool = False  # truncation took a learnt reply's stop token: a reply cut short, or lost
    dropped: str | None = None  # why this example cannot be trained on, if it cannot

    @property
    def n_supervised(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


class Renderer:
    """Turns Examples into Encoded ids + labels for one tokenizer and one data config."""

    def __init__(
        self,
        tokenizer: Any,
        template: str = "auto",
        system_prompt: str | None = None,
        max_seq_len: int = 1024,
        truncation: str = "drop",
    ):
        if not getattr(tokenizer, "is_fast", False):
            raise ModelError(
                "edgetune needs a fast (Rust) tokenizer for offset-based label masking; "
                "this model only ships a slow one"
            )
        self.tokenizer = tokenizer
        # transformers warns of "indexing errors" at the first row past model_max_length: edgetune
        # measures every row against data.max_seq_len itself, and drops or cuts it, said
        getattr(tokenizer, "deprecation_warnings", {})[
            "sequence-length-is-longer-than-the-specified-maximum"
        ] = True
        self.template_source = "model"
        # the fallback (or the plain template) saved with a run's adapter and merged model is not a
        # template of the model's own: a prompt-completion row trained plainly is benched, checked
        # and chatted with plainly too
        if not tokenizer.chat_template or tokenizer.chat_template in (
            FALLBACK_CHAT_TEMPLATE,
            PLAIN_CHAT_TEMPLATE,
        ):
            self.template_source = "fallback"
            if template == "chat" or template == "auto":
                tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
        self.template = template
        self.system_prompt = system_prompt
        self.max_seq_len = max_seq_len
        self.truncation = truncation
        self.eos_id = tokenizer.eos_token_id
        source = getattr(tokenizer, "name_or_path", "")  # "" for a tokenizer built in memory, not "."
        # what counts as a trained stop: a chat template ends turns in its own token where it has one
        local = bool(source) and Path(source).is_dir()
        # the token a reply ends in: the template's turn end, or EOS where it writes none after a reply
        turn_end = template_turn_end(tokenizer)
        stops = stop_ids(Path(source), tokenizer) if local else [self.eos_id, turn_end]
        self.stop_ids = set(stops) - {None}
        self.reply_end = (
            tokenizer.convert_ids_to_tokens(turn_end) if turn_end is not None else tokenizer.eos_token
        )
        self.stop_texts = tuple(tokenizer.convert_ids_to_tokens(sorted(self.stop_ids)))
        self.bos_id = tokenizer.bos_token_id
        # Does the tokenizer put BOS in front by itself? Then the text must not carry it as well.
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        self.adds_bos = self.bos_id is not None and len(probe) > 0 and probe[0] == self.bos_id

    # ------------------------------------------------------------------ text

    def uses_chat(self, ex: Example) -> bool:
        return not self.plain_prompts(ex.format)

    def plain_prompts(self, data_format: str) -> bool:
        """Does a row of this format reach the model as its own text, with no chat template? Text
        rows do; prompt-completion rows under `data.template: plain`, or under `auto` for a model
        with no template of its own. A model trained so must be prompted so (chat, Modelfile)."""
        if data_format in ("messages", "alpaca", "sharegpt"):
            return False
        if data_format == "text":
            return True
        return not (self.template == "chat" or (self.template == "auto" and self.template_source == "model"))

    def conversation(self, ex: Example) -> list[dict[str, str]]:
        msgs = ex.as_messages()
        if self.system_prompt and msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": self.system_prompt})
        return msgs

    def chat_text(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        from edgetune.templating import apply_chat_template

        return apply_chat_template(self.tokenizer, messages, add_generation_prompt)

    def prompt_text(self, ex: Example) -> str:
        """What inference is given for this example: everything up to the reply it must produce."""
        if ex.format == "text":
            return ""
        if not self.uses_chat(ex):
            return ex.prompt
        return self.chat_text(self.prompt_messages(ex), add_generation_prompt=True)

    def prompt_messages(self, ex: Example) -> list[dict[str, str]]:
        """A chat example's turns before the reply it is scored on (its last learnt one: a later
        reply of weight 0 is context the scored one never saw)."""
        msgs = self.conversation(ex)
        last = (
            ex.answer_index() + len(msgs) - len(ex.as_messages())
            if ex.format == "messages"
            else len(msgs) - 1
        )
        return msgs[:last]

    def spans(self, ex: Example) -> tuple[str, list[tuple[int, int]]]:
        """The full text and the character spans whose tokens carry loss."""
        eos = self.tokenizer.eos_token or ""
        if ex.format == "text":
            return ex.text + eos, [(0, len(ex.text) + len(eos))]
        if not self.uses_chat(ex):
            full = ex.prompt + ex.completion + eos
            return full, [(len(ex.prompt), len(full))]
        msgs = self.conversation(ex)
        full = self.chat_text(msgs, add_generation_prompt=False)
        spans = []
        shift = len(msgs) - len(ex.as_messages())  # data.system_prompt put in front
        turns = [(m["role"], m["content"]) for m in msgs]
        untrained = tuple(i + shift for i in ex.untrained)
        for i in range(len(msgs)):
            # weight 0, or a reply before any prompt (a ShareGPT greeting): context. Nothing asked for
            # a greeting, and the turns before it may not render what the template puts first
            if not learnt_reply(turns, i, untrained):
                continue
            before = self.chat_text(msgs[:i], add_generation_prompt=True)
            # the last turn's is the full text, rendered already
            through = (
                full if i + 1 == len(msgs) else self.chat_text(msgs[: i + 1], add_generation_prompt=False)
            )
            if not full.startswith(before) or not full.startswith(through):
                raise DataError(
                    f"{ex.source}: the chat template renders earlier turns differently once later "
                    "turns follow, so assistant turns cannot be located; use one assistant turn per row"
                )
            spans.append((len(before), len(through)))
        # a template that writes no stop after a row's last reply ("### Response:\n{content}\n\n", or
        # one leaving the last reply open): it is trained to end in one, or the model never stops
        if (
            spans
            and spans[-1][1] == len(full)
            and self.reply_end
            and not full.rstrip().endswith(self.stop_texts)
        ):
            full += self.reply_end
            spans[-1] = (spans[-1][0], len(full))
        return full, spans

    # ------------------------------------------------------------------ ids

    def ids_for_text(self, text: str) -> list[int]:
        """Token ids for inference on `text`, with exactly one BOS where the model wants one."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if self.adds_bos and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id] + ids
        return ids

    def trained_characters(self, ex: Example) -> list[tuple[int, int]]:
        """The character ranges of spans(ex)'s text whose tokens carry loss (what `data check` shows)."""
        text, spans = self.spans(ex)
        ranges: list[tuple[int, int]] = []
        for _, label, (a, e) in self._labelled(text, spans):
            if label == IGNORE:
                continue
            if ranges and ranges[-1][1] >= a:
                ranges[-1] = (ranges[-1][0], max(e, ranges[-1][1]))
            else:
                ranges.append((a, e))
        return ranges

    def _labelled(
        self, text: str, spans: list[tuple[int, int]], tokenised: tuple[tuple, tuple] | None = None
    ) -> list[tuple[int, int, tuple[int, int]]]:
        """(id, label, character range in text) for each token, loss on those inside `spans`. Where
        the text's tokens do not begin with the inference prompt's (a token reaching from the prompt
        into the answer: a prompt ending "Answer: " before "Paris", a reply opening with a newline),
        the text is cut at the last answer and each side tokenised alone, so the ids before it are
        the ids inference is given and its first token is trained on. An earlier turn's token over
        the boundary carries that turn's loss whole. `tokenised`: _tokenised of the text and of its
        prompt, where encode_many tokenised them in a batch."""
        answer = _answer_start(spans)  # the reply inference is asked for
        whole, prompt = tokenised or (self._tokenised(text), self._tokenised(text[:answer]))
        pieces = [whole]
        # compared by ids, not offsets: tokenizers that trim offsets put " Paris" at "P"
        if whole[1][: len(prompt[1])] != prompt[1]:
            pieces = self._cut_at(text, answer, prompt, whole[1]) or pieces
        tokens = []
        for offset, piece_ids, offsets in pieces:
            for token, (a, e) in zip(piece_ids, offsets):
                # a token over both sides (where no cut is clean) still carries the answer's loss. One
                # of no width (a space whose offsets the tokenizer trimmed away) is inside a span, or
                # at the start of the answer's own piece; at a span's edge elsewhere it is the prompt's
                start, end = offset + a, offset + e
                inside = any(
                    s < end and start < f if end > start else s < start < f or start == s == offset > 0
                    for s, f in spans
                )
                tokens.append((token, token if inside else IGNORE, (start, end)))
        return tokens

    def _tokenised(self, text: str, offset: int = 0) -> tuple[int, list[int], list[tuple[int, int]]]:
        """(offset of `text` in the whole, its ids, each id's character range within `text`)."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return offset, list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def _tokenised_many(self, texts: list[str]) -> list[tuple[int, list[int], list[tuple[int, int]]]]:
        """_tokenised for each text, in one call into the tokenizer."""
        if not texts:
            return []
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return [
            (0, list(ids), [tuple(o) for o in offs])
            for ids, offs in zip(enc["input_ids"], enc["offset_mapping"])
        ]

    def _cut_at(self, text: str, cut: int, prompt: tuple, whole: list[int]):
        """`prompt` (text[:cut], tokenised) and text[cut:] tokenised alone as a continuation (after
        the EOS token where a tokenizer puts "▁" in front of a bare input); None where neither way
        decodes to the same text as `whole` (one that puts "▁" after every special token too)."""
        decoded = self.tokenizer.decode(whole, clean_up_tokenization_spaces=False)
        for lead in dict.fromkeys(("", self.tokenizer.eos_token or "")):
            _, ids, offsets = self._tokenised(lead + text[cut:], cut - len(lead))
            keep = [i for i, (s, _) in enumerate(offsets) if s >= len(lead)]  # the sentinel's own go
            answer = (cut - len(lead), [ids[i] for i in keep], [offsets[i] for i in keep])
            if self.tokenizer.decode(prompt[1] + answer[1], clean_up_tokenization_spaces=False) == decoded:
                return [prompt, answer]
        return None

    def encode(self, ex: Example) -> Encoded:
        """Ids and labels; `dropped` says why an example cannot be used (too long, nothing to learn)."""
        return self._encoded(ex, self._labelled(*self.spans(ex)))

    def encode_many(self, examples: list[Example], batch: int = 512) -> Iterator[Encoded | InputError]:
        """encode() of each example in turn, tokenised a batch at a time (one call into the
        tokenizer, not two per example: prepare of 10k chats 11.5-11.8 s -> 9.1-9.8 s here); a row
        the chat template refuses comes back as its error, in its place."""
        for at in range(0, len(examples), batch):
            rendered: list[tuple[Example, Any]] = []
            for ex in examples[at : at + batch]:
                try:
                    rendered.append((ex, self.spans(ex)))
                except InputError as e:  # DataError too
                    rendered.append((ex, e))
            ok = [r for _, r in rendered if not isinstance(r, InputError)]
            wholes = self._tokenised_many([text for text, _ in ok])
            prompts = self._tokenised_many([text[: _answer_start(spans)] for text, spans in ok])
            tokenised = iter(zip(wholes, prompts))
            for ex, r in rendered:
                yield (
                    r if isinstance(r, InputError) else self._encoded(ex, self._labelled(*r, next(tokenised)))
                )

    def _encoded(self, ex: Example, tokens: list[tuple[int, int, tuple[int, int]]]) -> Encoded:
        ids, labels = [t for t, _, _ in tokens], [label for _, label, _ in tokens]
        if self.adds_bos and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
            labels.insert(0, IGNORE)
        if labels:  # nothing comes before the first token to predict it from (a text row's first word)
            labels[0] = IGNORE
        out = Encoded(ids, labels, ex.source, length=len(ids))
        if len(ids) > self.max_seq_len:
            if self.truncation == "drop":
                out.dropped = f"longer than data.max_seq_len ({len(ids)} > {self.max_seq_len} tokens)"
                return out
            out.input_ids, out.labels, out.truncated = (
                ids[: self.max_seq_len],
                labels[: self.max_seq_len],
                True,
            )
            out.cut_reply = not self.stop_ids.isdisjoint(labels[self.max_seq_len :])
        if not out.n_supervised:
            out.dropped = (
                "no tokens left to learn from after truncation (data.max_seq_len)"
                if out.truncated
                else "nothing to learn from: its only reply comes before any prompt"
            )
        return out
