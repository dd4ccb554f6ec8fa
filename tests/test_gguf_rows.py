"""GGUF export of a model folder whose tokenizer has more tokens than its embedding has rows
(special tokens added without resize_token_embeddings; Gemma 3's image token in a text model)."""

from __future__ import annotations

import io

import pytest
from conftest import build_tiny_model, build_tokenizer

from edgetune.errors import ModelError
from edgetune.export.gguf_export import export_gguf
from edgetune.export.llama_runtime import load_llama

ADDED = ["<tool>", "</tool>"]
TEXTS = ["<|im_start|>user\nThe router lost its uplink, error E1042.<|im_end|>\n", "battery 40% low"]


def _tokenizer(kind: str, tmp_path):
    if kind == "byte-level":
        return build_tokenizer(), "LlamaForCausalLM"
    from test_gguf import train_sentencepiece
    from transformers import LlamaTokenizerFast

    model = train_sentencepiece(tmp_path / "spm", pad_id=0, eos_id=1, bos_id=2, unk_id=3)
    names = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    return LlamaTokenizerFast(vocab_file=str(model), legacy=False, **names), "LlamaForCausalLM"


def _grown(kind: str, tmp_path, template_writes: str | None = None):
    """A tiny model whose tokenizer got ADDED after it was built, the embedding left as it was."""
    tok, arch = _tokenizer(kind, tmp_path)
    rows = len(tok)
    tok.add_special_tokens({"additional_special_tokens": ADDED})
    if template_writes:
        tok.chat_template = "{% for m in messages %}" + template_writes + "{{ m.content }}\n{% endfor %}"
    model_dir = build_tiny_model(tmp_path, tok, arch, vocab_size=rows)
    assert len(tok) == rows + len(ADDED)
    return model_dir, tok, rows


def _console():
    from rich.console import Console

    return Console(file=io.StringIO(), width=300, color_system=None)


@pytest.mark.parametrize("kind", ["byte-level", "sentencepiece"])
def test_tokens_past_the_embedding_rows_are_left_out_with_a_warning_and_llama_cpp_loads_the_file(
    tmp_path, kind
):
    """Two special tokens added without resizing: the GGUF listed 2 tokens more than the embedding
    has rows, and llama.cpp refused it ("Failed to load model", the cause unnamed)."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    model_dir, _, rows = _grown(kind, tmp_path)
    console = _console()
    result = export_gguf(model_dir, tmp_path / "gguf", ["f32"], None, {}, console=console)
    (artifact,) = result.artifacts
    assert len(GGUFReader(str(artifact.path)).get_field("tokenizer.ggml.tokens").contents()) == rows
    printed = console.file.getvalue()
    assert "2 tokenizer token(s) past the model's" in printed and "'<tool>', '</tool>'" in printed
    assert printed.count("left out of the GGUF") == 1 and len(result.warnings) == 1
    llm = load_llama(artifact.path, n_ctx=64)  # raised before
    tok = AutoTokenizer.from_pretrained(model_dir)
    for text in TEXTS:  # everything the model can read tokenises as before
        ids = tok(text)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=ids[:1] == [tok.bos_token_id], special=True) == ids


def test_a_chat_template_token_past_the_embedding_rows_is_refused_in_one_line(tmp_path):
    """The chat template writes <tool>, which the model has no row for: the file was written
    (unloadable), where no GGUF can carry that template faithfully."""
    model_dir, _, rows = _grown("byte-level", tmp_path, template_writes="<tool>")
    with pytest.raises(ModelError) as info:
        export_gguf(model_dir, tmp_path / "gguf", ["f32"], None, {})
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(model_dir))
    assert f"the chat template writes '<tool>' ({rows}), past the model's {rows} embedding rows" in message
    assert "resize_token_embeddings" in message
    assert not list((tmp_path / "gguf").iterdir())
