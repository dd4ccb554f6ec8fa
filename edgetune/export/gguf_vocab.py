"""The tokenizer half of a GGUF file: vocabulary, token types, merges, pre-tokenizer, special ids.

Token types follow llama.cpp's rules: ids with no token are UNUSED "[PAD<id>]" fillers up to the
config's vocab_size, added tokens are CONTROL when special and USER_DEFINED otherwise, the rest
NORMAL. The list has one token per embedding row, as llama.cpp requires: a token added to the
tokenizer past the rows (no resize_token_embeddings; Gemma 3's image token in a text model) can be
neither read nor written by the model, and is left out (GGUFVocab.left_out names them), unless the
model needs it (EOS, BOS, pad, unknown, or a token its chat template writes): that is refused. The pre-tokenizer name is read from the structure of tokenizer.json (its split regex and
digit handling), not guessed: an unrecognised one is an error, because a wrong one silently
changes tokenisation in llama.cpp.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from edgetune.errors import InputError, ModelError

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
    # SentencePiece-style: transformers puts "▁" before the input's start only (Metaspace's
    # prepend_scheme "first", what recent transformers makes of Llama 2 / Mistral tokenizers)
    prefix_at_start_only: bool = False
    left_out: list[str] = field(default_factory=list)  # the tokenizer's tokens past the rows


def _flatten(step: dict[str, Any] | None, key: str = "pretokenizers") -> list[dict[str, Any]]:
    """A pre-tokenizer's (or normalizer's) steps, Sequences opened."""
    if not step:
        return []
    if step.get("type") == "Sequence":
        return [p for item in step.get(key, []) for p in _flatten(item, key)]
    return [step]


def detect_pre(tokenizer_json: dict[str, Any], source: Path) -> str:
    parts = _flatten(tokenizer_json.get("pre_tokenizer"))
    kinds = [p.get("type") for p in parts]
    if any(p.get("type") == "ByteLevel" and p.get("add_prefix_space") for p in parts):
        raise InputError(
            f"{source}: the pre-tokenizer adds a space before the text (ByteLevel add_prefix_space), "
            "which llama.cpp does not: exporting it would tokenise differently there"
        )
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
        read = _byte_level_bpe
    elif model.get("type") == "BPE" and model.get("byte_fallback"):
        read = _sentencepiece_like
    else:
        read = None
    if read is not None:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        left_out = _past_the_rows(model_dir, tok, vocab_size)
        vocab = read(model_dir, tj, vocab_size, tok)
        vocab.left_out = left_out
        return vocab
    raise InputError(
        f"{path}: tokenizer model {model.get('type')!r} is not supported for GGUF export "
        "(supported: byte-level BPE, SentencePiece-style BPE with byte fallback)"
    )


def _past_the_rows(model_dir: Path, tok, rows: int) -> list[str]:
    """The tokenizer's tokens whose ids have no embedding row; a needed one is refused."""
    from edgetune.models import refuse_ids_past_the_embedding

    refuse_ids_past_the_embedding(model_dir, tok)  # EOS, BOS, pad, unknown
    past = sorted((i, t) for t, i in tok.get_vocab().items() if i >= rows)
    template = tok.chat_template
    template = " ".join(template.values()) if isinstance(template, dict) else template or ""
    if written := [f"{t!r} ({i})" for i, t in past if t in template]:
        raise ModelError(
            f"{model_dir}: the chat template writes {', '.join(written)}, past the model's {rows} "
            "embedding rows (config.json vocab_size); resize the model's embeddings to the tokenizer "
            "(resize_token_embeddings) and save both, or take the token out of the template"
        )
    return [t for _, t in past]


def _byte_level_bpe(model_dir: Path, tj: dict[str, Any], vocab_size: int, tok) -> GGUFVocab:
    source = model_dir / "tokenizer.json"
    normalizer = tj.get("normalizer")
    # llama.cpp normalises nothing: NFC (Qwen's) changes only text that is not NFC already, which
    # llama.cpp's own converter accepts too; anything else (lowercasing, ...) would change every prompt
    steps = _flatten(normalizer, "normalizers")
    if any(step.get("type") != "NFC" for step in steps):
        raise InputError(
            f"{source}: normalizer {json.dumps(normalizer)[:120]} is not applied by llama.cpp; exporting "
            "it would tokenise differently there"
        )
    by_id = {i: t for t, i in tok.get_vocab().items()}
    added = tok.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return GGUFVocab("gpt2", detect_pre(tj, source), tokens, None, types)


def _sentencepiece_like(model_dir: Path, tj: dict[str, Any], vocab_size: int, tok) -> GGUFVocab:
    """SentencePiece-style BPE (Llama 2, TinyLlama, Mistral, Gemma, Phi-3). llama.cpp's tokenizer
    merges the adjacent pair whose joined piece scores highest, so the scores must carry the merge
    order: tokenizer.model's own, or, without one, tokenizer.json's merge ranks (rank r -> -r).
    The added tokens are then typed as transformers has them (tokenizer_config.json's
    added_tokens_decoder, added_tokens.json): llama.cpp matches CONTROL and USER_DEFINED tokens
    whole before any merge, as transformers does; typed NORMAL (a SentencePiece user-defined piece
    such as Gemma's <start_of_turn>) or left out (ids past the .model's pieces), llama.cpp spelled
    them out in characters or bytes."""
    model_file = model_dir / "tokenizer.model"
    pieces = _model_file_pieces(model_file) if model_file.is_file() else _merge_rank_pieces(tj["model"])
    added = tok.added_tokens_decoder  # id -> AddedToken
    n = vocab_size
    tokens, scores = [f"[PAD{i}]" for i in range(n)], [-1000.0] * n
    types = [gguf.TokenType.UNUSED] * n
    for i, (text, score, kind) in enumerate(pieces[:n]):
        tokens[i], scores[i], types[i] = text, score, kind
    for i, token in added.items():
        if i >= n:
            continue  # past the embedding rows: left out
        if types[i] in (gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.BYTE):
            continue  # the model's own <unk>, <s>, </s> and byte pieces keep their type
        # a normalised added token is matched after "▁" stands for the space; llama.cpp matches raw text
        tokens[i] = (
            token.content if token.special or not token.normalized else token.content.replace("▁", " ")
        )
        types[i] = gguf.TokenType.CONTROL if token.special else gguf.TokenType.USER_DEFINED
        scores[i] = -1000.0
    steps = _flatten(tj.get("pre_tokenizer"))
    first = any(s.get("type") == "Metaspace" and s.get("prepend_scheme") == "first" for s in steps)
    return GGUFVocab("llama", "default", tokens, scores, types, prefix_at_start_only=first)


def _model_file_pieces(path: Path) -> list[tuple[str, float, int]]:
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (OSError, RuntimeError) as exc:
        raise InputError(f"{path}: unreadable SentencePiece model ({exc})") from None
    pieces = []
    for i in range(sp.vocab_size()):
        kind = gguf.TokenType.NORMAL
        if sp.IsUnknown(i):
            kind = gguf.TokenType.UNKNOWN
        elif sp.IsControl(i):
            kind = gguf.TokenType.CONTROL
        elif sp.IsUnused(i):
            kind = gguf.TokenType.UNUSED
        elif sp.IsByte(i):
            kind = gguf.TokenType.BYTE
        pieces.append((sp.IdToPiece(i), float(sp.GetScore(i)), kind))
    return pieces


BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _merge_rank_pieces(model: dict[str, Any]) -> list[tuple[str, float, int]]:
    """A SentencePiece BPE's pieces from tokenizer.json: transformers applies its merges by rank,
    llama.cpp by the joined piece's score, so each joined piece scores minus its first merge's rank.
    Pieces no merge makes (characters, bytes, specials) are never a joined pair in transformers:
    they score below every merge."""
    vocab: dict[str, int] = model["vocab"]
    merges = model.get("merges") or []
    lowest = -float(len(merges) + 1)
    score = dict.fromkeys(vocab, lowest)
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        joined = left + right
        if joined in score and score[joined] == lowest:
            score[joined] = -float(rank)
    pieces: list[tuple[str, float, int]] = [("", lowest, gguf.TokenType.UNUSED)] * (max(vocab.values()) + 1)
    for text, i in vocab.items():
        kind = gguf.TokenType.BYTE if BYTE_PIECE.fullmatch(text) else gguf.TokenType.NORMAL
        if text == model.get("unk_token"):
            kind = gguf.TokenType.UNKNOWN
        pieces[i] = (text, score[text], kind)
    return [(text or f"[PAD{i}]", sc, kind) for i, (text, sc, kind) in enumerate(pieces)]
