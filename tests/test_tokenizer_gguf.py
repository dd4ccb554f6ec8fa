"""The tokenizer chat rebuilds from a byte-level GGUF outside its run, checked against llama.cpp's own
tokenisation of vocabulary-only files written here (no model: the flags are what is tested)."""

from __future__ import annotations

import json

import pytest
from conftest import CORPUS, build_tokenizer

from edgetune.export.gguf_vocab import LLAMA3_REGEX
from edgetune.tokenizer_gguf import _GPT2, LLAMA3_PRE, tokenizer_from_gguf

TEXTS = [
    "The router in the lobby lost its uplink again, error code E1042.",
    " error errors threshold",
    "battery health 40% below threshold on inverter pv-inv-roof-02",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n",
]


@pytest.fixture(scope="module")
def merge_gapped():
    """A Llama 3 style tokenizer (split regex, then bytes) whose vocabulary holds words its merges
    no longer make (the last merge of each dropped), as a tokenizer with ignore_merges can: merged
    or not, those words are one token where llama.cpp ignores merges, several where it does not."""
    tok = build_tokenizer(split_regex=LLAMA3_REGEX, corpus=CORPUS, vocab_size=600)
    tj = json.loads(tok.backend_tokenizer.to_str())
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in tj["model"]["merges"]]
    gapped = [m for m in merges if "".join(m) in ("Ġerror", "Ġthreshold", "Ġrouter")]
    assert len(gapped) == 3  # the words are in the vocabulary, each made by a merge
    tokens = [tok.convert_ids_to_tokens(i) for i in range(len(tok))]
    specials = set(tok.all_special_tokens) | {"<|im_start|>", "<s>"}
    return tokens, [m for m in merges if m not in gapped], specials


def write_vocab_gguf(path, vocab, pre, **keys):
    """A GGUF holding a "gpt2" vocabulary and llama.cpp's required hyperparameters, no tensors;
    `keys` are the tokenizer.ggml keys to write (bos_token_id, add_bos_token, ...)."""
    import gguf

    tokens, merges, specials = vocab
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in tokens]
    )
    writer.add_token_merges([f"{a} {b}" for a, b in merges])
    for key, value in keys.items():
        if isinstance(value, bool):
            writer.add_bool(f"tokenizer.ggml.{key}", value)
        else:
            writer.add_uint32(f"tokenizer.ggml.{key}", value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def assert_ids_as_llama_cpp(path, texts=TEXTS):
    """The rebuilt tokenizer's ids, with and without the special tokens it adds, are llama.cpp's."""
    from llama_cpp import Llama

    rebuilt = tokenizer_from_gguf(path)
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    for text in texts:
        for add in (False, True):
            ours = rebuilt(text, add_special_tokens=add)["input_ids"]
            assert ours == llm.tokenize(text.encode(), add_bos=add, special=True), (path.name, add, text)
    return rebuilt, llm


UNUSUAL_TEXTS = [
    "a+b=c <= d; x=1,234,567.89 y=-0.5e10 ^x ~y |z $5",
    "error 123456 items, 40%: the router's uplink lost 1042 packets.",
    "héllo wörld ½ ² ٣ 𝟙 — “quotes” ‘a’ ... 🙂👍 日本語のテキスト",
    "tabs\tand\r\nCRLF  \n  two  spaces 'S 'LL don't I'M @#&*()[]{}\\/ _-_ `code`",
]


@pytest.mark.parametrize("pre", ["default", "", *sorted(_GPT2)])
def test_a_default_or_gpt2_family_gguf_tokenizes_as_llama_cpp(tmp_path, merge_gapped, pre):
    """llama.cpp's "default" pre-tokenizer (also a file without tokenizer.ggml.pre) splits
    punctuation runs, then numbers apart from the space before them and ASCII digits in threes;
    edgetune read it as GPT-2's regex (" 1042" was one piece, llama.cpp's "104", "2" after "Ġ"),
    and refused the other names llama.cpp gives GPT-2's regex (phi-2, olmo, mpt...)."""
    assert_ids_as_llama_cpp(write_vocab_gguf(tmp_path / "v.gguf", merge_gapped, pre), TEXTS + UNUSUAL_TEXTS)


@pytest.mark.parametrize("pre", sorted(LLAMA3_PRE) + ["qwen2", "gpt-2", "smollm"])
def test_a_gguf_tokenizer_ignores_merges_and_adds_bos_as_llama_cpp_does_for_its_pre_type(
    tmp_path, merge_gapped, pre
):
    """A Llama 3 GGUF ("llama-bpe") without tokenizer.ggml.add_bos_token: llama.cpp ignores merges
    for a word in the vocabulary and adds BOS, edgetune did neither (" error" -> 2 ids, not 1; no
    BOS), and refused llama.cpp's other names for the Llama 3 pre-tokenizer ("llama3", "falcon3")."""
    path = write_vocab_gguf(
        tmp_path / f"{pre}.gguf", merge_gapped, pre, bos_token_id=merge_gapped[0].index("<s>")
    )
    rebuilt, llm = assert_ids_as_llama_cpp(path)
    word = rebuilt(" error", add_special_tokens=False)["input_ids"]
    assert len(word) == (1 if pre in LLAMA3_PRE else 2)
    assert (rebuilt("a")["input_ids"][0] == llm.token_bos()) == (pre in LLAMA3_PRE)


@pytest.mark.parametrize(
    "pre, keys, first, last",
    [
        ("llama-bpe", {"add_bos_token": False}, "a", "a"),
        ("gpt-2", {"add_bos_token": True}, "<s>", "a"),
        ("llama-bpe", {"add_eos_token": True}, "<s>", "<|im_end|>"),
        ("qwen2", {"add_bos_token": True, "add_eos_token": True}, "<s>", "<|im_end|>"),
    ],
)
def test_the_files_add_bos_and_add_eos_keys_win_over_the_pre_types_default(
    tmp_path, merge_gapped, pre, keys, first, last
):
    """tokenizer.ggml.add_bos_token false on a Llama 3 file and add_eos_token true: llama.cpp
    follows the keys; edgetune read add_bos_token only, and never add_eos_token."""
    tokens = merge_gapped[0]
    ids = {"bos_token_id": tokens.index("<s>"), "eos_token_id": tokens.index("<|im_end|>")}
    path = write_vocab_gguf(tmp_path / "m.gguf", merge_gapped, pre, **ids, **keys)
    rebuilt, _ = assert_ids_as_llama_cpp(path)
    ids = rebuilt("a")["input_ids"]
    assert (tokens[ids[0]], tokens[ids[-1]]) == (first, last)


def test_a_llama3_gguf_without_a_bos_id_gets_llama_cpps_default_bos(tmp_path, merge_gapped):
    """No tokenizer.ggml.bos_token_id: llama.cpp's BOS of a "gpt2" file is id 11, added by default
    for Llama 3; edgetune added none."""
    path = write_vocab_gguf(tmp_path / "m.gguf", merge_gapped, "llama-bpe")
    rebuilt, _ = assert_ids_as_llama_cpp(path)
    assert rebuilt("a")["input_ids"][0] == 11
