"""What llama.cpp's front-ends make of a shipped GGUF's prompts: the ids they tokenise a rendered
chat into must be the ids the model was trained and benched on."""

import pytest
from click.testing import CliRunner
from conftest import CHATML, CORPUS, build_tiny_model, build_tokenizer

from edgetune.cli import main
from edgetune.export.gguf_convert import convert
from edgetune.export.gguf_vocab import SPLIT_REGEX_PRE
from edgetune.export.llama_runtime import load_llama
from edgetune.export.parity import front_end_ids


def test_a_template_that_writes_the_bos_itself_passes_parity_with_one_bos(tmp_path):
    """Llama 3 and Gemma 3: the tokenizer adds a BOS and the chat template opens with bos_token.
    The parity check tokenised the rendered prompt with the file's BOS on top: two BOS, so every
    GGUF of such a model failed its export (exit 3)."""
    tokenizer = build_tokenizer(add_bos=True, chat_template="{{ bos_token }}" + CHATML)
    model = build_tiny_model(tmp_path, tokenizer, "LlamaForCausalLM")
    out = tmp_path / "export"
    result = CliRunner().invoke(
        main, ["export", str(model), "--to", "gguf", "--quant", "f32", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    llm = load_llama(out / "gguf" / "model-f32.gguf", n_ctx=256)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text.startswith("<s>")
    ids = front_end_ids(llm, text)
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"] and ids.count(llm.token_bos()) == 1


def test_a_tokenizer_that_appends_eos_ships_a_file_that_does_not(tmp_path):
    """Training, bench and chat tokenise prompts without the EOS such a tokenizer appends; a file
    saying add_eos_token would make llama.cpp end every prompt with one."""
    from tokenizers import processors

    tokenizer = build_tokenizer(add_bos=True)
    specials = [(t, tokenizer.convert_tokens_to_ids(t)) for t in ("<s>", "<|im_end|>")]
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A <|im_end|>", special_tokens=specials
    )
    assert tokenizer("a")["input_ids"][-1] == tokenizer.eos_token_id
    out = convert(build_tiny_model(tmp_path, tokenizer, "LlamaForCausalLM"), tmp_path / "m.gguf", "f32")
    llm = load_llama(out, n_ctx=256)
    assert llm.metadata.get("tokenizer.ggml.add_eos_token") == "false"
    ids = front_end_ids(llm, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert ids[0] == llm.token_bos() and ids[-1] != tokenizer.eos_token_id


@pytest.mark.parametrize("regex, pre", list(SPLIT_REGEX_PRE.items()), ids=list(SPLIT_REGEX_PRE.values()))
def test_chat_with_a_split_regex_gguf_outside_its_run_tokenises_as_in_training(tmp_path, regex, pre):
    """A Llama 3, Qwen2 or Phi-4-mini GGUF shipped out of its run (examples/Makefile copies it to
    dist/): chat rebuilds the tokenizer from the file, and refused every split-regex one."""
    from test_gguf import TRICKY

    from edgetune.chat import open_chat
    from edgetune.data.render import Renderer
    from edgetune.tokenizer_gguf import tokenizer_from_gguf

    tokenizer = build_tokenizer(split_regex=regex, corpus=CORPUS + TRICKY, vocab_size=600)
    model = build_tiny_model(tmp_path, tokenizer, "LlamaForCausalLM")
    shipped = convert(model, tmp_path / "dist" / "model.gguf", "f32")
    rebuilt = tokenizer_from_gguf(shipped)
    for text in [*TRICKY, "<|im_start|>user\nhi<|im_end|>\n"]:
        assert (
            rebuilt(text, add_special_tokens=False)["input_ids"]
            == tokenizer(text, add_special_tokens=False)["input_ids"]
        ), text
    session = open_chat(shipped, threads=1)
    messages = [{"role": "user", "content": TRICKY[0]}]
    trained = Renderer(tokenizer)
    assert session.prompt_ids(messages) == trained.ids_for_text(
        trained.chat_text(messages, add_generation_prompt=True)
    )
    assert session.reply("hi", max_new_tokens=2) is not None
