"""Parity tokenises a fixed text on which pre-tokenizers part, with the shipped file and with the
model: a file whose split rules are not the model's fails even where the user's held-out prompts
hold nothing that shows it."""

from __future__ import annotations

import json

import pytest
from conftest import CORPUS, build_tiny_model, build_tokenizer
from test_gguf import TRICKY
from test_gguf_hparams import rewrite_gguf

from edgetune.data.render import Renderer
from edgetune.data.rows import Example
from edgetune.export.gguf_vocab import LLAMA3_REGEX, QWEN2_REGEX

# digits alone split otherwise under Qwen2's rule (one by one) than under Llama 3's (up to three)
WORDS_ONLY = Example(
    "messages", messages=(("user", "router lost its uplink"), ("assistant", "ok")), source="t:1"
)


@pytest.fixture(scope="module")
def llama3_split(tmp_path_factory):
    tok = build_tokenizer(split_regex=LLAMA3_REGEX, corpus=CORPUS + TRICKY, vocab_size=600)
    return build_tiny_model(tmp_path_factory.mktemp("probe"), tok, "LlamaForCausalLM"), tok


def test_a_gguf_whose_pre_tokenizer_is_not_the_models_fails_though_the_prompts_agree(tmp_path, llama3_split):
    from edgetune.export.gguf_convert import convert
    from edgetune.export.parity import check_gguf

    model_dir, tok = llama3_split
    path = convert(model_dir, tmp_path / "model-f32.gguf", "f32")
    (row,) = check_gguf(model_dir, [("f32", path)], Renderer(tok), [WORDS_ONLY], 8)
    assert row.passed, row.failures

    rewrite_gguf(path, {"tokenizer.ggml.pre": "qwen2"})
    (row,) = check_gguf(model_dir, [("f32", path)], Renderer(tok), [WORDS_ONLY], 8)
    assert row.ids_equal and row.kl < 1e-5  # the prompt is read alike, and computes alike
    assert not row.passed
    (said,) = row.failures
    assert said.startswith(
        "the file's tokenizer splits edgetune's test text (tokenizer_probe.PROBE_TEXT: digits, "
        "contractions, whitespace runs, accents) otherwise than the model's: from token "
    ), said
    assert said.endswith("the file's tokenizer.ggml.pre is 'qwen2', where the model's is 'llama-bpe')"), said


def test_a_gguf_that_leaves_the_bos_to_the_template_passes(tmp_path):
    """A Llama 3-style model whose tokenizer adds <s> and whose template writes it too: a file with
    tokenizer.ggml.add_bos_token false reads every prompt as the model does (the template gives the
    BOS) and must not fail on the test text, which no template wraps."""
    from conftest import CHATML

    from edgetune.export.gguf_convert import convert
    from edgetune.export.parity import check_gguf

    tok = build_tokenizer(chat_template="{{ bos_token }}" + CHATML, add_bos=True)
    model_dir = build_tiny_model(tmp_path, tok, "LlamaForCausalLM")
    path = convert(model_dir, tmp_path / "model-f32.gguf", "f32")
    rewrite_gguf(path, {"tokenizer.ggml.add_bos_token": False})
    (row,) = check_gguf(model_dir, [("f32", path)], Renderer(tok), [WORDS_ONLY], 8)
    assert row.ids_equal and row.passed, row.failures


def test_a_gguf_that_writes_the_models_tokens_as_other_text_fails(tmp_path):
    """Byte tokens typed as text: every prompt reads alike, the logits and greedy ids are the
    model's, and llama.cpp front-ends print each newline or accented letter the model writes as
    "<0x0A>" or "<0xC3><0xA9>". Parity had passed it."""
    from gguf import GGUFReader, TokenType
    from test_gguf import train_sentencepiece
    from transformers import LlamaTokenizerFast

    from edgetune.export.gguf_convert import convert
    from edgetune.export.parity import check_gguf

    train_sentencepiece(tmp_path / "spm", pad_id=0, eos_id=1, bos_id=2, unk_id=3)
    tok = LlamaTokenizerFast(
        vocab_file=str(tmp_path / "spm.model"),
        legacy=False,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    tok.chat_template = "{% for m in messages %}{{ m['content'] + eos_token }}{% endfor %}"
    model_dir = build_tiny_model(tmp_path / "m", tok, "LlamaForCausalLM", vocab_size=len(tok))
    path = convert(model_dir, tmp_path / "model-f32.gguf", "f32")
    (row,) = check_gguf(model_dir, [("f32", path)], Renderer(tok), [WORDS_ONLY], 8)
    assert row.passed, row.failures

    types = list(GGUFReader(str(path)).get_field("tokenizer.ggml.token_type").contents())
    rewrite_gguf(
        path, {"tokenizer.ggml.token_type": [TokenType.NORMAL if t == TokenType.BYTE else t for t in types]}
    )
    (row,) = check_gguf(model_dir, [("f32", path)], Renderer(tok), [WORDS_ONLY], 8)
    assert row.ids_equal and row.greedy == 1.0 and not row.passed
    (said,) = row.failures
    assert said.startswith(
        "the file's tokenizer writes the model's tokens as other text: where the model writes "
    ), said
    assert "<0x" in said and said.endswith("its tokenizer.ggml.tokens and token_type)"), said


def test_an_onnx_folder_whose_pre_tokenizer_is_not_the_models_fails_though_the_prompts_agree(
    tmp_path, llama3_split
):
    from edgetune.export.onnx_export import OnnxExportConfig, export_onnx
    from edgetune.export.parity import check_onnx

    model_dir, tok = llama3_split
    (folder,) = [
        a.path for a in export_onnx(model_dir, tmp_path / "onnx", ["fp32"], OnnxExportConfig()).artifacts
    ]
    (row,) = check_onnx(model_dir, [("fp32", folder)], Renderer(tok), [WORDS_ONLY], 8)
    assert row.passed, row.failures

    spec = json.loads((folder / "tokenizer.json").read_text())
    split = spec["pre_tokenizer"]["pretokenizers"][0]
    assert split["pattern"]["Regex"] == LLAMA3_REGEX
    split["pattern"]["Regex"] = QWEN2_REGEX
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    (row,) = check_onnx(model_dir, [("fp32", folder)], Renderer(tok), [WORDS_ONLY], 8)
    assert row.ids_equal and not row.passed
    (said,) = row.failures
    assert said.startswith("the folder's tokenizer splits edgetune's test text "), said
    assert said.endswith("its tokenizer.json's normalizer and pre_tokenizer)"), said

    # its own split again, but a decoder that leaves byte-level pieces as they are ("Ġ" for a space)
    split["pattern"]["Regex"] = LLAMA3_REGEX
    spec["decoder"] = None
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    (row,) = check_onnx(model_dir, [("fp32", folder)], Renderer(tok), [WORDS_ONLY], 8)
    assert row.ids_equal and not row.passed
    (said,) = row.failures
    assert said.startswith("the folder's tokenizer writes the model's tokens as other text: "), said
    assert "Ġ" in said and said.endswith("its tokenizer.json's decoder and added_tokens)"), said


def test_the_probe_text_reads_alike_in_every_tokenizer_kind_edgetune_converts(tmp_path):
    """No false failure: SentencePiece (Llama 2 with and without legacy spaces, Gemma) and every
    split regex edgetune names; the real SmolLM2 runs it in the end-to-end exports."""
    from test_gguf import train_sentencepiece
    from transformers import GemmaTokenizerFast, LlamaTokenizerFast

    from edgetune.export.gguf_convert import convert
    from edgetune.export.gguf_vocab import SPLIT_REGEX_PRE
    from edgetune.export.llama_runtime import load_llama
    from edgetune.export.tokenizer_probe import gguf_problems, model_probe

    train_sentencepiece(tmp_path / "spm", pad_id=0, eos_id=1, bos_id=2, unk_id=3)
    names = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    kinds = {
        "llama2-legacy": (
            LlamaTokenizerFast(vocab_file=str(tmp_path / "spm.model"), legacy=True, **names),
            "LlamaForCausalLM",
        ),
        # the Hub's Llama 2 / Mistral tokenizers: "▁" before the text, which the decoder strips
        "llama2-prefix": (
            LlamaTokenizerFast(
                vocab_file=str(tmp_path / "spm.model"),
                legacy=True,
                add_prefix_space=True,
                from_slow=True,
                **names,
            ),
            "LlamaForCausalLM",
        ),
        "llama2": (
            LlamaTokenizerFast(vocab_file=str(tmp_path / "spm.model"), legacy=False, **names),
            "LlamaForCausalLM",
        ),
        "gemma": (
            GemmaTokenizerFast(vocab_file=str(tmp_path / "spm.model"), pad_token="<pad>", **names),
            "Gemma3ForCausalLM",
        ),
        "gpt2": (build_tokenizer(), "LlamaForCausalLM"),
    }
    for regex, pre in SPLIT_REGEX_PRE.items():
        kinds[pre] = (
            build_tokenizer(split_regex=regex, corpus=CORPUS + TRICKY, vocab_size=600),
            "LlamaForCausalLM",
        )
    for kind, (tok, arch) in kinds.items():
        model_dir = build_tiny_model(tmp_path / kind, tok, arch, vocab_size=len(tok))
        llm = load_llama(convert(model_dir, tmp_path / f"{kind}.gguf", "f32"), n_ctx=64)
        probe = model_probe(tok)
        assert gguf_problems(llm, probe) == [], kind  # read and written back alike
        if kind == "llama2-prefix":
            assert tok.convert_ids_to_tokens(probe.ids[:1])[0].startswith("▁") and probe.text.startswith(
                "I'm"
            )
        del llm


def test_a_token_added_before_the_test_text_is_said_of_the_text_not_of_a_prompt():
    from edgetune.export.tokenizer_probe import split_otherwise

    decode = {7: "<s>", 1: "a", 2: "b"}.get

    def pieces(ids):
        return "".join(decode(i) for i in ids)

    (added,) = split_otherwise("the file's", [7, 1, 2], [1, 2], pieces, "hint")
    assert "adds '<s>' (id 7) before the text, the model does not" in added, added
    (lost,) = split_otherwise("the file's", [1, 2], [7, 1, 2], pieces, "hint")
    assert "leaves out the model's '<s>' (id 7) before the text" in lost, lost
