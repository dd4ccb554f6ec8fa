"""Where a shipped file's token ids part from the model's, and a text that makes them part
where their pre-tokenizers differ, or where the file writes the model's tokens as other text.

The parity prompts are the user's held-out examples: a pre-tokenizer that splits digits or
contractions otherwise shows only where they hold such text (SmolLM2's file relabelled from
"smollm" to "llama-bpe" changed 2 of the demo's 8 prompts, to "deepseek-v3" none). This text has
what the split rules llama.cpp knows differ on: contractions in any case, digit runs, whitespace
and punctuation runs, camel case, code, accents and scripts without case. Characters that an NFC
or NFKC normaliser rewrites (combining marks, no-break spaces, full-width forms) are left out:
llama.cpp does not normalise, so they would part a correct file from its model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROBE_TEXT = (
    "I'm sure you'RE right: it's HelloWorld's JSONParser. We'll see, they've said IT'S fine, don't.\n"
    "Read 1234567 rows in 3.14159 s on 2026-12-07 (E1042, v2.0.1, 0x1F, 42%).\n"
    "  spaced   out\t\ttabs   \n\n\n\r\nend!!! ...?! -- ``` x**2 // y\n"
    "def f(x):\n    return x  # note\n"
    "caf\u00e9 na\u00efve \u00c5ngstr\u00f6m \u00fcber \u00f1 \u0663\u0664\u0665 "
    "\u65e5\u672c\u8a9e\u30c6\u30ad\u30b9\u30c8 \U0001f600"
)


@dataclass(frozen=True)
class ModelProbe:
    """The merged model's reading of PROBE_TEXT: its ids (no BOS), the text its tokenizer writes
    for them, and llama.cpp's name for its pre-tokenizer (None where it has none)."""

    ids: list[int]
    text: str
    pre: str | None = None


def model_probe(tokenizer, model_dir: Path | None = None) -> ModelProbe:
    ids = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    return ModelProbe(ids, _decoded(tokenizer, ids), model_pre(model_dir) if model_dir else None)


def gguf_problems(llm, probe: ModelProbe) -> list[str]:
    """How a GGUF (loaded in llama.cpp) reads PROBE_TEXT, or writes the model's ids for it, otherwise
    than the model: one problem at most, the split first."""
    return _problems(
        "the file's",
        probe,
        llm.tokenize(PROBE_TEXT.encode(), add_bos=False, special=True),
        lambda ids: llm.detokenize(ids, special=True),
        gguf_split_setting(llm.metadata, probe.pre),
        _front_end_text(llm, probe.ids),
        "its tokenizer.ggml.tokens and token_type",
    )


def folder_problems(tokenizer, probe: ModelProbe) -> list[str]:
    """The same for an ONNX folder's own tokenizer."""
    return _problems(
        "the folder's",
        probe,
        tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"],
        tokenizer.decode,
        "its tokenizer.json's normalizer and pre_tokenizer",
        _decoded(tokenizer, probe.ids),
        "its tokenizer.json's decoder and added_tokens",
    )


def _problems(whose, probe, ids, decode, split_hint: str, text: str, text_hint: str) -> list[str]:
    """`ids`: the shipped tokenizer's for PROBE_TEXT; `text`: what it writes for the model's ids."""
    return split_otherwise(whose, ids, probe.ids, decode, split_hint) or written_otherwise(
        whose, text, probe.text, text_hint
    )


def _front_end_text(llm, ids: list[int]) -> str:
    """`ids` as llama.cpp front-ends print them (no special tokens). A SentencePiece vocabulary that
    puts a space before the text (add_space_prefix, Llama 2's and Mistral's) writes it back after
    the BOS only, as transformers' decoder strips it: decoded after the BOS, which is not printed."""
    bos, meta = llm.token_bos(), llm.metadata
    # llama.cpp's default: on for a SentencePiece ("llama") vocabulary, off for the others
    default = "true" if meta.get("tokenizer.ggml.model") == "llama" else "false"
    spaced = meta.get("tokenizer.ggml.add_space_prefix", default) == "true"
    lead = [bos] if spaced and bos >= 0 else []
    return llm.detokenize(lead + ids, special=False).decode("utf-8", "replace")


def _decoded(tokenizer, ids: list[int]) -> str:
    """As a text-generation pipeline shows a reply: without special tokens (a text token marked
    special in a shipped tokenizer would vanish from every answer)."""
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def split_otherwise(
    whose: str, shipped: list[int], model: list[int], decode: Callable, hint: str
) -> list[str]:
    """The problem, in words, where `shipped` (the file's ids for PROBE_TEXT, no BOS) is not `model`
    (the merged model's); [] where they agree. `hint`: the setting that decides the split there."""
    if shipped == model:
        return []
    return [
        f"{whose} tokenizer splits edgetune's test text (tokenizer_probe.PROBE_TEXT: digits, contractions, "
        f"whitespace runs, accents) otherwise than the model's: {ids_difference(shipped, model, decode, 'text')} "
        f"(front-ends would read prompts as other tokens; {hint})"
    ]


def written_otherwise(whose: str, shipped: str, model: str, hint: str) -> list[str]:
    """The problem, in words, where the text a shipped file's tokenizer gives the model's ids for
    PROBE_TEXT (`shipped`) is not the model's tokenizer's (`model`); [] where they agree. Ids alike
    are not enough: a GGUF whose byte tokens are typed as text reads every prompt alike and
    computes alike, and front-ends print each newline or accented letter it writes as "<0x0A>"."""
    if shipped == model:
        return []
    at = first_difference(shipped, model)
    start = max(0, at - 8)
    return [
        f"{whose} tokenizer writes the model's tokens as other text: where the model writes "
        f"{model[start : at + 12]!r}, it writes {shipped[start : at + 12]!r} "
        f"(front-ends would show that text; {hint})"
    ]


def gguf_split_setting(metadata: dict[str, str], model_pre: str | None) -> str:
    """What decides how a GGUF splits text, from llama.cpp's metadata; `model_pre`: the name
    edgetune's converter gives the model's pre-tokenizer (None where it has none)."""
    kind = metadata.get("tokenizer.ggml.model")
    if kind != "gpt2":  # SentencePiece-like: no pre-tokenizer regex
        return (
            f"a {kind!r} vocabulary splits by tokenizer.ggml.add_space_prefix and its token scores and types"
        )
    pre = metadata.get("tokenizer.ggml.pre")
    named = f", where the model's is {model_pre!r}" if model_pre and model_pre != pre else ""
    return f"the file's tokenizer.ggml.pre is {pre!r}{named}"


def model_pre(model_dir: Path) -> str | None:
    """llama.cpp's name for the model's pre-tokenizer, as edgetune's converter gives it."""
    from edgetune.errors import InputError
    from edgetune.export.gguf_vocab import detect_pre

    path = model_dir / "tokenizer.json"
    try:
        return detect_pre(json.loads(path.read_text()), path)
    except (OSError, ValueError, InputError):
        return None


def ids_difference(shipped: list[int], model: list[int], decode, what: str = "prompt") -> str:
    """Where the ids a shipped file's tokenizer gives a prompt (or other `what`) first part from
    the model's, in words ("" when they agree): the usual causes are a BOS added or lost, and a
    pre-tokenizer or vocabulary that splits text otherwise."""
    if shipped == model:
        return ""

    def text(ids: list[int]) -> str:  # llama.cpp detokenizes to bytes
        piece = decode(ids)
        return piece.decode(errors="replace") if isinstance(piece, bytes) else piece

    if shipped[1:] == model:
        return f"the file adds {text(shipped[:1])!r} (id {shipped[0]}) before the {what}, the model does not"
    if model[1:] == shipped:
        return f"the file leaves out the model's {text(model[:1])!r} (id {model[0]}) before the {what}"
    at = first_difference(shipped, model)
    return (
        f"from token {at} of {len(model)} the file reads {text(shipped[at : at + 3])!r} "
        f"(ids {shipped[at : at + 3]}), the model {text(model[at : at + 3])!r} (ids {model[at : at + 3]})"
    )


def first_difference(a, b) -> int:
    """The first position where two sequences (ids, or text) differ, or the shorter one's length."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
