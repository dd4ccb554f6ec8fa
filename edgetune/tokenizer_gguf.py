"""A Hugging Face fast tokenizer rebuilt from a GGUF file's tokenizer metadata.

transformers can load a tokenizer from GGUF, but for SmolLM2's GGUF (tokenizer.ggml.model "gpt2",
pre "smollm") it gets the EOS token wrong (<|im_start|> instead of <|im_end|>) and adds a BOS the
model never saw (add_bos_token is false in the file). We rebuild it from the metadata instead:
the byte-level BPE vocabulary and merges, llama.cpp's pre-tokenizer for the declared `pre` type
(GPT-2's, SmolLM's, llama.cpp's "default", or the split regex of Llama 3, Qwen2 or GPT-4o;
SentencePiece models in tokenizer_gguf_spm),
the special tokens by their token type, and the special ids and chat template as written.

llama.cpp's flags, as its vocabulary loader (src/llama-vocab.cpp, llama_vocab::impl::load) sets
them for a "gpt2" file: its Llama 3 pre-tokenizer names (LLAMA3_PRE) turn on ignore_merges (a word
that is one token of the vocabulary is that token, whatever the merges would make of it) and BOS;
every other name edgetune reads adds neither BOS nor EOS. tokenizer.ggml.add_bos_token and
add_eos_token, where the file has them, win over those defaults. Without a bos_token_id or
eos_token_id key, llama.cpp's ids for a "gpt2" file are 11 (where the vocabulary has an id 11).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgetune.errors import ModelError

TOKEN_TYPE_CONTROL = 3  # gguf.TokenType.CONTROL
TOKEN_TYPE_USER_DEFINED = 4

# llama.cpp pre-tokenizer types that are "split digits one by one, then GPT-2 byte-level regex"
_DIGITS_THEN_GPT2 = {"smollm", "starcoder", "refact"}
# the names llama.cpp gives GPT-2's regex (its "gpt2" it refuses to load)
_GPT2 = {
    "gpt-2",
    "phi-2",
    "jina-es",
    "jina-de",
    "jina-v2-es",
    "jina-v2-de",
    "gigachat",
    "mpt",
    "olmo",
    "jais",
    "trillion",
}
# llama.cpp's "default" (also a file without tokenizer.ggml.pre): punctuation runs, GPT-2's regex,
# number runs, then ASCII digits in threes, each splitting the pieces of the one before
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
DEFAULT_PRE_REGEXES = (r"[\p{P}\$\+<=>\^~\|]+", _GPT2_REGEX, r"\p{N}+", r"[0-9][0-9][0-9]")
# the `pre` names llama.cpp gives its Llama 3 pre-tokenizer: the Llama 3 split regex, ignore_merges
# and add_bos on
LLAMA3_PRE = frozenset(
    {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"}
)
GPT2_DEFAULT_SPECIAL_ID = 11  # llama.cpp's BOS and EOS of a "gpt2" file without their keys


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def tokenizer_from_gguf(path: Path):
    """The file's tokenizer, rebuilt from its metadata; metadata of the wrong types (token ids as
    strings, merges without a space) is the file's fault, said in one line."""
    from edgetune.errors import EdgetuneError
    from edgetune.models import short_reason

    try:
        return _tokenizer_from_gguf(path)
    except (EdgetuneError, MemoryError):
        raise
    except Exception as exc:  # the tokenizers library raises plain Exceptions for a bad vocabulary
        raise ModelError(f"{path}: its tokenizer metadata cannot be read ({short_reason(exc)})") from None


def _tokenizer_from_gguf(path: Path):
    from gguf import GGUFReader
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from edgetune.export.gguf_vocab import LLAMA3_REGEX, SPLIT_REGEX_PRE
    from edgetune.models import CAUSAL_INPUTS
    from edgetune.validate import check_gguf

    check_gguf(path)
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:
        raise ModelError(f"{path}: not a readable GGUF file ({exc})") from None
    kind = _field(reader, "tokenizer.ggml.model")
    pre = _field(reader, "tokenizer.ggml.pre") or "default"  # llama.cpp: missing or empty
    if kind == "llama":  # SentencePiece: Llama 2, Mistral, Phi-3, Gemma 3
        from edgetune.tokenizer_gguf_spm import spm_tokenizer

        return spm_tokenizer(reader, path, _field)
    if kind != "gpt2":
        raise ModelError(
            f"{path}: tokenizer model {kind!r} is not supported for GGUF import (byte-level BPE and "
            "SentencePiece are); chat with the file inside its run (RUN/export/gguf/), where the "
            "training tokenizer is"
        )
    split_regex = {name: regex for regex, name in SPLIT_REGEX_PRE.items()}.get(pre)
    if pre in LLAMA3_PRE:
        split_regex = LLAMA3_REGEX
    if split_regex is not None:  # Llama 3, Qwen2 and Qwen3, Phi-4-mini: a split regex, then bytes
        pre_tok = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    elif pre in _DIGITS_THEN_GPT2:
        pre_tok = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    elif pre == "default":
        splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in DEFAULT_PRE_REGEXES]
        pre_tok = pre_tokenizers.Sequence(
            [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    elif pre in _GPT2:
        pre_tok = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        raise ModelError(
            f"{path}: pre-tokenizer {pre!r} is not supported for GGUF import; chat with the file "
            "inside its run (RUN/export/gguf/), where the training tokenizer is"
        )

    tokens: list[str] = _field(reader, "tokenizer.ggml.tokens")
    types: list[int] = _field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges", [])]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    llama3 = pre in LLAMA3_PRE
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, ignore_merges=llama3))
    tk.pre_tokenizer = pre_tok
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [
        AddedToken(tokens[i], special=True, normalized=False)
        for i, t in enumerate(types)
        if t == TOKEN_TYPE_CONTROL
    ]
    user_defined = [
        AddedToken(tokens[i], special=False, normalized=False)
        for i, t in enumerate(types)
        if t == TOKEN_TYPE_USER_DEFINED
    ]
    tk.add_special_tokens(specials)
    if user_defined:
        tk.add_tokens(user_defined)

    def id_for(key: str, default: int | None = None) -> int | None:
        idx = _field(reader, f"tokenizer.ggml.{key}")
        if idx is None or not 0 <= idx < len(tokens):  # llama.cpp: a bad id keeps the default
            idx = default
        return idx if idx is not None and 0 <= idx < len(tokens) else None

    def tok_for(key: str) -> str | None:
        idx = id_for(key)
        return None if idx is None else tokens[idx]

    bos_id = id_for("bos_token_id", GPT2_DEFAULT_SPECIAL_ID)
    eos_id = id_for("eos_token_id", GPT2_DEFAULT_SPECIAL_ID)
    bos = None if bos_id is None else tokens[bos_id]
    eos = None if eos_id is None else tokens[eos_id]
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        model_input_names=list(CAUSAL_INPUTS),  # no token_type_ids
        bos_token=bos,
        eos_token=eos,
        unk_token=tok_for("unknown_token_id"),
        pad_token=tok_for("padding_token_id") or eos,
        clean_up_tokenization_spaces=False,
        model_max_length=int(
            _field(reader, f"{_field(reader, 'general.architecture')}.context_length", 2048)
        ),
    )
    hf.chat_template = _field(reader, "tokenizer.chat_template")
    add_bos = bos is not None and bool(_field(reader, "tokenizer.ggml.add_bos_token", llama3))
    add_eos = eos is not None and bool(_field(reader, "tokenizer.ggml.add_eos_token", False))
    if add_bos or add_eos:
        # byte-level BPE adds nothing by itself; what the model expects goes in through a template
        single = [f"{bos}:0"] * add_bos + ["$A:0"] + [f"{eos}:0"] * add_eos
        hf._tokenizer.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single=single,
                    pair=[*single, "$B:1"] + [f"{eos}:1"] * add_eos,
                    special_tokens=[
                        (t, i) for t, i, on in ((bos, bos_id, add_bos), (eos, eos_id, add_eos)) if on
                    ],
                ),
            ]
        )
    return hf
