"""The tokenizer half of a GGUF file: vocabulary, token types, merges, pre-tokenizer, special ids.

Token types follow llama.cpp's rules: ids with no token are UNUSED "[PAD<id>]" fillers up to the
config's vocab_size, added tokens are CONTROL when special and USER_DEFINED otherwise, the rest
NORMAL. The pre-tokenizer name is read from the structure of tokenizer.json (its split regex and
digit handling), not guessed: an unrecognised one is an error, because a wrong one silently
changes tokenisation in llama.cpp.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from edgetune.errors import InputError

# llama.cpp's split regexes, as tokenizer.json stores them, and the `pre` names llama.cpp gives them
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# o200k (GPT-4o's, and Phi-4-mini's): case-aware word runs with the contraction as a suffix, and a
# punctuation run that takes a trailing "/"
GPT4O_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_REGEX_PRE = {LLAMA3_REGEX: "llama-bpe", QWEN2_REGEX: "qwen2", GPT4O_REGEX: "gpt-4o"}


@dataclass
class GGUFVocab:
    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str
    tokens: list[str]
    scores: list[float] | None
    types: list[int]  # merges are written by gguf.SpecialVocab from tokenizer.json


def _flatten(pre: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not pre:
        return []
    if pre.get("type") == "Sequence":
        return [p for item in pre.get("pretokenizers", []) for p in _flatten(item)]
    return [pre]


def detect_pre(tokenizer_json: dict[str, Any], source: Path) -> str:
    parts = _flatten(tokenizer_json.get("pre_tokenizer"))
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if (
        kinds == ["Digits", "ByteLevel"]
        and parts[0].get("individual_digits")
        and parts[1].get("use_regex", True)
    ):
        return "smollm"  # one digit per token, then GPT-2's regex (llama.cpp: smollm == starcoder)
    if kinds and kinds[0] == "Split" and kinds[-1] == "ByteLevel":
        regex = (parts[0].get("pattern") or {}).get("Regex")
        if regex in SPLIT_REGEX_PRE:
            return SPLIT_REGEX_PRE[regex]
    raise InputError(
        f"{source}: pre-tokenizer {json.dumps(tokenizer_json.get('pre_tokenizer'))[:200]} is not "
        "recognised; exporting it would tokenise differently in llama.cpp"
    )


def read_vocab(model_dir: Path, vocab_size: int) -> GGUFVocab:
    from transformers import AutoTokenizer

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise InputError(f"{model_dir}: no tokenizer.json (a fast tokenizer is needed for GGUF export)")
    tj = json.loads(path.read_text(encoding="utf-8"))
    model = tj.get("model", {})
    if model.get("type") == "BPE" and (tj.get("decoder") or {}).get("type") == "ByteLevel":
        return _byte_level_bpe(model_dir, tj, vocab_size, AutoTokenizer.from_pretrained(str(model_dir)))
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return _sentencepiece_like(model_dir, vocab_size)
    raise InputError(
        f"{path}: tokenizer model {model.get('type')!r} is not supported for GGUF export "
        "(supported: byte-level BPE, SentencePiece-style BPE with byte fallback)"
    )


def _byte_level_bpe(model_dir: Path, tj: dict[str, Any], vocab_size: int, tok) -> GGUFVocab:
    by_id = {i: t for t, i in tok.get_vocab().items()}
    added = tok.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(max(vocab_size, len(by_id))):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return GGUFVocab("gpt2", detect_pre(tj, model_dir / "tokenizer.json"), tokens, None, types)


def _sentencepiece_like(model_dir: Path, vocab_size: int) -> GGUFVocab:
    from gguf.vocab import LlamaHfVocab, SentencePieceVocab

    # the SentencePiece model carries the merge scores llama.cpp's tokenizer ranks by; tokenizer.json alone does not
    spm = (model_dir / "tokenizer.model").is_file()
    vocab = SentencePieceVocab(model_dir) if spm else LlamaHfVocab(model_dir)
    tokens, scores, types = [], [], []
    for text, score, kind in vocab.all_tokens():
        tokens.append(text.decode("utf-8") if isinstance(text, bytes) else text)
        scores.append(score)
        types.append(kind)
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    return GGUFVocab("llama", "default", tokens, scores, types)
