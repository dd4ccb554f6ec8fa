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


def _spm_tokenizer(kind: str, folder):
    """SentencePiece BPE tokenizers as the recipe families ship them: Llama 2 / TinyLlama (BOS,
    a space before the text), Gemma 3 (turn markers in the vocabulary), Phi-3 (markers after it
    that strip the whitespace following them)."""
    from test_gguf import PHI3_TEMPLATE, train_sentencepiece
    from tokenizers import AddedToken
    from transformers import GemmaTokenizerFast, LlamaTokenizerFast

    ids = {"pad_id": 0, "eos_id": 1, "bos_id": 2, "unk_id": 3}
    markers = ["<start_of_turn>", "<end_of_turn>"] if kind == "gemma" else []
    model = train_sentencepiece(folder / kind, **ids, user_defined_symbols=markers)
    names = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    if kind == "gemma":
        tok = GemmaTokenizerFast(vocab_file=str(model), **names)
        tok.add_special_tokens({"additional_special_tokens": markers})
        tok.chat_template = (
            "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m.role == 'assistant' else "
            "m.role }}\n{{ m.content }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}"
            "<start_of_turn>model\n{% endif %}"
        )
        return tok, "Gemma3ForCausalLM"
    if kind == "phi3":  # Phi-3-mini's: every special token strips but <unk>, <s> and <|endoftext|>
        names |= {t: AddedToken(names[t], rstrip=True, special=True) for t in ("eos_token", "pad_token")}
    tok = LlamaTokenizerFast(vocab_file=str(model), legacy=False, add_prefix_space=kind == "llama", **names)
    if kind == "llama":
        tok.chat_template = (
            "{% for m in messages %}{{ '[INST] ' + m.content + ' [/INST]' if m.role == 'user' else "
            "m.content + eos_token }}{% endfor %}"
        )
        return tok, "LlamaForCausalLM"
    stripped = ["<|user|>", "<|end|>", "<|assistant|>", "<|system|>"]
    tok.add_special_tokens(
        {
            "additional_special_tokens": [AddedToken("<|endoftext|>", special=True)]
            + [AddedToken(t, rstrip=True, special=True) for t in stripped]
        }
    )
    tok.chat_template = PHI3_TEMPLATE
    return tok, "Phi3ForCausalLM"


@pytest.mark.parametrize("kind", ["llama", "gemma", "phi3"])
def test_chat_with_a_sentencepiece_gguf_outside_its_run_tokenises_as_llama_cpp(tmp_path, kind):
    """A Gemma 3, Phi-3, Mistral or TinyLlama GGUF shipped out of its run was refused by chat: its
    tokenizer is now rebuilt from the file, and gives the ids llama.cpp gives, specials included."""
    from llama_cpp import Llama
    from test_gguf import TRICKY

    from edgetune.chat import open_chat
    from edgetune.tokenizer_gguf import tokenizer_from_gguf

    tokenizer, arch = _spm_tokenizer(kind, tmp_path)
    model = build_tiny_model(tmp_path, tokenizer, arch, vocab_size=len(tokenizer))
    shipped = convert(model, tmp_path / "dist" / "model.gguf", "f32")
    rebuilt = tokenizer_from_gguf(shipped)
    llm = Llama(model_path=str(shipped), vocab_only=True, verbose=False)
    chat = tokenizer.apply_chat_template(
        [
            {"role": "user", "content": "The router  lost\nits uplink"},
            {"role": "assistant", "content": "E1042"},
        ],
        tokenize=False,
    )
    texts = [*TRICKY, chat, " leading space", "trailing  ", "\n\nnewlines\n", "12345 67", "", "\U0001f600"]
    for text in texts:
        ours = rebuilt(text, add_special_tokens=False)["input_ids"]
        assert ours == llm.tokenize(text.encode(), add_bos=False, special=True), (kind, text)
        assert rebuilt.decode(ours) == tokenizer.decode(ours), (kind, text)
    assert rebuilt("a")["input_ids"][:1] == ([llm.token_bos()] if llm.metadata.get("tokenizer.ggml.add_bos_token") == "true" else rebuilt("a", add_special_tokens=False)["input_ids"][:1])  # fmt: skip
    session = open_chat(shipped, threads=1)
    assert session.reply("hi", max_new_tokens=2) is not None


def test_llama_cpp_runs_on_the_cores_this_process_may_use_not_the_machines(tmp_path, monkeypatch):
    """In a container or under taskset, os.cpu_count() is the host's cores: llama.cpp got that many
    threads (chat, parity, quantising) and decoded 1.8x slower with 8 threads on 1 core."""
    import os

    tokenizer = build_tokenizer()
    out = convert(build_tiny_model(tmp_path, tokenizer, "LlamaForCausalLM"), tmp_path / "m.gguf", "f32")
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    llm = load_llama(out, n_ctx=64)
    assert (llm.n_threads, llm.n_threads_batch) == (1, 1)


def test_llama_cpp_warnings_stay_quiet_and_the_error_that_refuses_a_file_is_named(tmp_path, capfd):
    """llama-cpp-python reads ggml's log levels by an older numbering: every llama.cpp warning
    was printed ("n_ctx_seq (4096) > n_ctx_train (512)" in the middle of an export), while the
    error saying why a file would not load went to /dev/null: "Failed to load model from file"."""
    from edgetune.errors import InputError

    out = convert(
        build_tiny_model(tmp_path, build_tokenizer(), "LlamaForCausalLM"), tmp_path / "m.gguf", "f32"
    )
    load_llama(out, n_ctx=4096)  # past the tiny model's 512
    assert capfd.readouterr().err == ""
    from llama_cpp import Llama

    Llama(model_path=str(out), n_ctx=4096, verbose=True)  # a program's own, after edgetune's: all of it
    assert "n_ctx_seq (4096) > n_ctx_train (512)" in capfd.readouterr().err
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(out.read_bytes().replace(b"llama.block_count", b"llama.block_cxunt"))
    with pytest.raises(InputError) as refused:
        load_llama(broken)
    assert str(refused.value).startswith(f"{broken}: llama.cpp cannot load this file (error loading model")
    assert str(refused.value).endswith("key not found in model: llama.block_count)")


def test_overlapping_loads_in_two_threads_leave_llama_cpps_defaults_as_they_were(tmp_path, monkeypatch):
    """Each load wrapped llama-cpp-python's default-parameters function and put the original back:
    where two threads' loads overlapped, the second saved the first's wrapper as the original, so
    repacking stayed off for every Llama the program built itself afterwards."""
    import threading

    import llama_cpp
    import llama_cpp.llama_cpp as bindings

    out = convert(
        build_tiny_model(tmp_path, build_tokenizer(), "LlamaForCausalLM"), tmp_path / "m.gguf", "f32"
    )
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def held_open(**kwargs):  # a load that lasts until the other thread's has begun
        name = threading.current_thread().name
        seen[name] = bindings.llama_model_default_params().use_extra_bufts
        if name == "first":
            first_in.set()
            second_in.wait(10)
        else:
            second_in.set()
            first_out.wait(10)
        return name

    monkeypatch.setattr(llama_cpp, "Llama", held_open)
    first = threading.Thread(target=load_llama, args=(out,), name="first")
    second = threading.Thread(target=load_llama, args=(out,), name="second")
    first.start()
    first_in.wait(10)
    second.start()
    first.join(10)
    first_out.set()
    second.join(10)
    assert seen == {"first": False, "second": False}  # off within each load
    assert bindings.llama_model_default_params().use_extra_bufts is True  # and the program's own again


def test_a_refused_file_is_named_by_its_own_reason_while_another_thread_loads(tmp_path):
    """llama.cpp's error lines were one list for the process: a thread loading another broken file
    meanwhile cleared it or put its own reason first."""
    from concurrent.futures import ThreadPoolExecutor

    from edgetune.errors import InputError

    good = convert(
        build_tiny_model(tmp_path, build_tokenizer(), "LlamaForCausalLM"), tmp_path / "m.gguf", "f32"
    )
    files = {}
    for key in ("llama.block_count", "llama.context_length"):
        files[key] = tmp_path / f"no-{key}.gguf"
        files[key].write_bytes(good.read_bytes().replace(key.encode(), key[:-1].encode() + b"X"))

    def reason(key: str) -> str:
        try:
            load_llama(files[key])
        except InputError as refused:
            return str(refused)
        return "loaded"

    keys = list(files) * 150
    with ThreadPoolExecutor(2) as pool:
        said = list(pool.map(reason, keys))
    wrong = [
        (key, got) for key, got in zip(keys, said) if not got.endswith(f"key not found in model: {key})")
    ]
    assert not wrong, [got[-90:] for _, got in wrong[:2]]
