"""A Hugging Face fast tokenizer rebuilt from a SentencePiece GGUF (tokenizer.ggml.model "llama":
Llama 2 / TinyLlama, Mistral, Phi-3, Gemma 3), tokenising as llama.cpp tokenises the file.

llama.cpp's SentencePiece path, step by step, and the `tokenizers` part that does the same:

1. The text is cut at every CONTROL, UNKNOWN and USER_DEFINED token, matched as raw text: added
   tokens, not normalised (CONTROL and UNKNOWN special). A model named Phi-3 (general.name holding
   "phi3" or "phi-3") strips the whitespace after those tokens and after </s>, but not after <unk>,
   <s> or <|endoftext|>: rstrip on the same tokens.
2. Each piece of raw text gets a " " in front where the file says add_space_prefix (llama.cpp's
   default), then every " " becomes "▁": Prepend and Replace normalisers, which run on each piece
   between added tokens, so the prefix lands where llama.cpp puts it. (Metaspace would not put one
   before a piece that already starts with a space; llama.cpp does.)
3. BPE by score over the whole piece, no split at spaces: the adjacent pair whose join is the
   highest-scored token joins first. As merges: every split of every token into two tokens, ranked
   by the joined token's score. Two mergeable tokens of one score that compete for overlapping pairs
   would break the tie differently (llama.cpp: leftmost; tokenizers: rank); SentencePiece-trained
   scores are distinct, and llama.cpp cuts user-defined tokens out before merging.
4. A character that is no token becomes its UTF-8 bytes, <0xNN>: byte fallback.
5. BOS and EOS as tokenizer.ggml.add_bos_token / add_eos_token say.

Checked against llama.cpp's own tokenisation of the files edgetune writes (tests/test_gguf.py). Not
matched: llama.cpp's Phi-3 rule strips only ASCII whitespace, `tokenizers` any (a no-break space
right after a marker), and of two added tokens that overlap, llama.cpp cuts the longest out first,
`tokenizers` the leftmost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgetune.errors import ModelError

TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED = 2, 3, 4  # gguf.TokenType
SPACE = "▁"
PHI3_NAMES = ("phi3", "phi-3")  # in general.name, lower-cased: llama.cpp's Phi-3 whitespace rule
PHI3_UNSTRIPPED = ("<unk>", "<s>", "<|endoftext|>")


def merges_by_score(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Every way to join two tokens into a third, the highest-scored join first."""
    ids = {token: i for i, token in enumerate(tokens)}
    ranked = []
    for i, token in enumerate(tokens):
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ids and right in ids:  # the splits of one token cover the same text: any order
                ranked.append((-scores[i], i, cut, (left, right)))
    ranked.sort(key=lambda r: r[:3])
    return [pair for *_, pair in ranked]


def spm_tokenizer(reader: Any, path: Path, field):
    """The tokenizer of a GGUF whose tokenizer.ggml.model is "llama"; `field(reader, key, default)`
    reads its metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    from edgetune.models import CAUSAL_INPUTS

    tokens: list[str] = list(field(reader, "tokenizer.ggml.tokens", []))
    n = len(tokens)
    scores = [float(s) for s in field(reader, "tokenizer.ggml.scores", [0.0] * n)]
    types = [int(t) for t in field(reader, "tokenizer.ggml.token_type", [1] * n)]
    vocab: dict[str, int] = {}
    for i, token in enumerate(tokens):
        if token in vocab:  # a tokenizers vocabulary maps each text to one id
            raise ModelError(
                f"{path}: token {token!r} is in the vocabulary twice (ids {vocab[token]} and {i})"
            )
        vocab[token] = i
    if not {f"<0x{b:02X}>" for b in range(256)} <= vocab.keys():
        raise ModelError(f"{path}: a SentencePiece vocabulary without all 256 byte tokens <0xNN>")

    def token_at(key: str) -> str | None:
        i = field(reader, f"tokenizer.ggml.{key}")
        return tokens[i] if i is not None and 0 <= i < n else None

    unk = token_at("unknown_token_id")
    tk = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges_by_score(tokens, scores),
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    prefix = bool(field(reader, "tokenizer.ggml.add_space_prefix", True))
    tk.normalizer = normalizers.Sequence(
        [normalizers.Prepend(SPACE)] * prefix + [normalizers.Replace(" ", SPACE)]
    )
    tk.decoder = decoders.Sequence(
        [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
        + [decoders.Strip(" ", 1, 0)] * prefix
    )
    phi3 = any(part in str(field(reader, "general.name", "")).lower() for part in PHI3_NAMES)

    def added(token: str, kind: int) -> AddedToken:
        strips = phi3 and token not in PHI3_UNSTRIPPED
        return AddedToken(token, special=kind != TOKEN_USER_DEFINED, normalized=False, rstrip=strips)

    tk.add_special_tokens([added(t, k) for t, k in zip(tokens, types) if k in (TOKEN_CONTROL, TOKEN_UNKNOWN)])
    if user := [added(t, k) for t, k in zip(tokens, types) if k == TOKEN_USER_DEFINED]:
        tk.add_tokens(user)
    bos, eos = token_at("bos_token_id"), token_at("eos_token_id")
    add_bos = bos is not None and bool(field(reader, "tokenizer.ggml.add_bos_token", True))
    add_eos = eos is not None and bool(field(reader, "tokenizer.ggml.add_eos_token", False))
    single = [f"{bos}:0"] * add_bos + ["$A:0"] + [f"{eos}:0"] * add_eos
    tk.post_processor = processors.TemplateProcessing(
        single=single,
        pair=[*single, "$B:1"] + [f"{eos}:1"] * add_eos,
        special_tokens=[(t, vocab[t]) for t, on in ((bos, add_bos), (eos, add_eos)) if on and t],
    )
    arch = field(reader, "general.architecture")
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        model_input_names=list(CAUSAL_INPUTS),  # no token_type_ids
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        pad_token=token_at("padding_token_id") or eos,
        clean_up_tokenization_spaces=False,
        model_max_length=int(field(reader, f"{arch}.context_length", 2048)),
    )
    hf.chat_template = field(reader, "tokenizer.chat_template")
    return hf
