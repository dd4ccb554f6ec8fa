"""An Ollama Modelfile beside each GGUF: the training chat format, its stop tokens, greedy defaults.

Ollama's TEMPLATE is a Go template, and a Jinja chat template cannot be translated in general, so
we write the Go form of the template families we recognise (ChatML, Llama 3, Gemma, Phi-3 and
Phi-4, edgetune's fallback) and say so in a comment otherwise (Ollama then falls back to its own detection from the
GGUF). When every training conversation carries the same system message, it becomes the SYSTEM
line: the tuned model answers in the format it learned only with the prompt it learned it under.
tests/ollama/render.go renders these templates the way Ollama does and checks the ids against
training's.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgetune.rundir import atomic_write_text

# Ollama hands a template every message, the system one included (its SYSTEM line becomes the first
# message when a request has none), and also the joined system text as .System: a template must
# print one of the two, never both. What comes before the first turn (a BOS) is not in them:
# `_head` puts in front what the training format has there and llama.cpp will not add.
CHATML = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)
LLAMA3 = (
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
# Gemma has no system turn: the system text opens the first user turn (message 1, after the system one)
GEMMA = (
    "{{- range $i, $m := .Messages }}"
    '{{- if eq .Role "user" }}<start_of_turn>user\n{{ if and $.System (eq $i 1) }}{{ $.System }}\n\n{{ end }}'
    "{{ .Content }}<end_of_turn>\n"
    '{{ else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n{{ end }}'
    "{{- end }}<start_of_turn>model\n"
)
# Phi-3 and Phi-3.5 put a newline after each role marker and each <|end|>; Phi-4-mini puts none
PHI = "{{- range .Messages }}<|{{ .Role }}|>{nl}{{ .Content }}<|end|>{nl}{{ end }}<|assistant|>{nl}"
FALLBACK = (
    '{{- range .Messages }}{{ if eq .Role "system" }}{{ .Content }}\n\n'
    '{{ else if eq .Role "user" }}### User:\n{{ .Content }}\n\n'
    '{{ else if eq .Role "assistant" }}### Assistant:\n{{ .Content }}{{ "{eos}" }}\n\n{{ end }}{{ end }}'
    "### Assistant:\n"
)
# the system turn of a rendered conversation, where a template adds one or adds to it
SYSTEM_TURN = {
    "chatml": re.compile(r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n<\|im_start\|>user\n", re.S),
    "llama3": re.compile(r"<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", re.S),
}
PROBE = "edgetune-probe"
SYSTEM_PROBE = "edgetune-system-probe"  # a system text no template trims or rewrites
TURN_OPENER = {
    "chatml": "<|im_start|>",
    "llama3": "<|start_header_id|>",
    "gemma": "<start_of_turn>",
    "phi": "<|user|>",
}


def template_family(chat_template: str | dict[str, str] | None) -> str | None:
    if isinstance(chat_template, dict):  # named templates: chat uses the default one
        chat_template = chat_template.get("default")
    if not chat_template:
        return None
    if "<|im_sep|>" in chat_template:
        return None  # Phi-4 (14B): ChatML's markers, another separator
    if "<|im_start|>" in chat_template:
        return "chatml"
    if "<|start_header_id|>" in chat_template:
        return "llama3"
    if "<start_of_turn>" in chat_template:
        return "gemma"
    if "<|end|>" in chat_template and "<|assistant|>" in chat_template:
        return "phi"
    if "### Assistant:" in chat_template:
        return "edgetune-fallback"
    return None


def stop_tokens(tokenizer, stop_ids=()) -> list[str]:
    """The model's own stop ids (generation_config's, e.g. Gemma's <end_of_turn>), its EOS, and the
    end-of-turn tokens of the common chat formats that its vocabulary has."""
    stops = [tokenizer.convert_ids_to_tokens(i) for i in sorted(stop_ids)]
    if tokenizer.eos_token and tokenizer.eos_token not in stops:
        stops.append(tokenizer.eos_token)
    for candidate in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|end_of_text|>", "<|endoftext|>"):
        if candidate in tokenizer.get_vocab() and candidate not in stops:
            stops.append(candidate)
    return stops


def shared_system_prompt(examples, renderer=None) -> str | None:
    """The system message every training conversation had: its own or, given the renderer, the
    recipe's system_prompt that the renderer puts in front of conversations without one."""

    def system_of(ex):
        messages = renderer.conversation(ex) if renderer else ex.as_messages()
        return next((m["content"] for m in messages if m["role"] == "system"), None)

    chats = [ex for ex in examples if (renderer.uses_chat(ex) if renderer else ex.format == "messages")]
    prompts = {system_of(ex) for ex in chats}
    return prompts.pop() if len(prompts) == 1 and None not in prompts else None


def system_block(renderer, family: str | None, system: str | None) -> str | None:
    """What the chat template puts in the system turn for `system`: where the template adds text of
    its own (Llama 3.1's knowledge date) or a default when there is none (SmolLM2, Qwen2.5), a model
    trained through it saw that in every example, so Ollama's SYSTEM must carry it too."""
    pattern = SYSTEM_TURN.get(family or "")
    if pattern is None:
        return system
    messages = [{"role": "system", "content": system}] * bool(system) + [{"role": "user", "content": PROBE}]
    text = renderer.chat_text(messages, True)
    marker = [{"role": "system", "content": SYSTEM_PROBE}, {"role": "user", "content": PROBE}]
    if system and SYSTEM_PROBE not in renderer.chat_text(marker, True):
        return None  # a template that leaves system turns out: training saw none, Ollama must not add one
    found = pattern.search(text)
    return found.group(1) if found else system


def _head(renderer, family: str) -> str:
    """What the chat template writes before the first turn (Llama 3's <|begin_of_text|>, Gemma's
    <bos>), less the BOS that llama.cpp adds itself where the GGUF's add_bos_token says so (the
    converter writes what the tokenizer does, so the two agree)."""
    opener = TURN_OPENER.get(family)
    text = renderer.chat_text([{"role": "user", "content": PROBE}], True)
    head = text[: text.find(opener)] if opener and opener in text else ""
    bos = renderer.tokenizer.bos_token
    return head[len(bos) :] if bos and renderer.adds_bos and head.startswith(bos) else head


def _phi_newline(renderer) -> str:
    """Phi-3's turns end their markers with a newline, Phi-4-mini's do not."""
    text = renderer.chat_text([{"role": "user", "content": PROBE}], True)
    return "\n" if f"<|user|>\n{PROBE}" in text else ""


def ollama_template(renderer) -> str | None:
    """The Go form of the training chat format, or None where it is not one we know."""
    tokenizer = renderer.tokenizer
    family = template_family(tokenizer.chat_template)
    template = {
        "chatml": CHATML,
        "llama3": LLAMA3,
        "gemma": GEMMA,
        "phi": PHI.replace("{nl}", _phi_newline(renderer)),
        "edgetune-fallback": FALLBACK.replace("{eos}", tokenizer.eos_token or ""),
    }.get(family or "")
    return _head(renderer, family) + template if template else None


def ollama_reads(value: str) -> str | None:
    """What Ollama's Modelfile parser (parser/parser.go) reads back from `SYSTEM \"\"\"value\"\"\"`:
    it keeps only printable characters and spaces, tabs and line ends (a no-break space or a zero-width
    joiner is dropped), and closes the value at the first line end where what it kept, trimmed,
    is whole; None where that comes before the end (a line of the prompt ending in \"\"\")."""
    text, kept = f'"""{value}"""', ""
    for i, r in enumerate(text + "\n"):
        if r in "\r\n":
            whole = kept.strip()
            if len(whole) >= 6 and whole.startswith('"""') and whole.endswith('"""'):
                return whole[3:-3] if i == len(text) else None
        if r in " \t\r\n" or r.isprintable():
            kept += r
    return None


def write_modelfile(
    gguf_path: Path, renderer, system: str | None, num_ctx: int | None = None, plain: bool = False
) -> Path:
    """`system`: the system prompt the model was trained under, or None; SYSTEM is what the chat
    template made of it (see system_block). `num_ctx`: a context to hold Ollama to, where a larger
    one makes llama.cpp compute otherwise than the model was trained (see gguf_arch.faithful_context).
    `plain`: the model was trained on plain prompts (Renderer.plain_prompts), so Ollama must pass
    each prompt as it is."""
    tokenizer = renderer.tokenizer
    lines = [
        f"# Ollama Modelfile written by edgetune for {gguf_path.name}",
        f"# ollama create my-model -f {gguf_path.stem}.Modelfile && ollama run my-model",
        "",
        f"FROM ./{gguf_path.name}",
        "",
    ]
    template = "{{ .Prompt }}" if plain else ollama_template(renderer)
    if plain:
        lines += ["# trained on plain prompts, with no chat template: each prompt goes to the model as it is"]
        lines += [f'TEMPLATE """{template}"""', ""]
        system = None
    elif template:
        lines += [f'TEMPLATE """{template}"""', ""]
        system = system_block(renderer, template_family(tokenizer.chat_template), system)
    else:
        lines += [
            "# The training chat template has no known Go form; Ollama reads it from the GGUF metadata.",
            "",
        ]
    read = ollama_reads(system) if system else None
    if system and read != system:
        why = (
            'a line ending in """, which ends a Modelfile value there'
            if read is None
            else "characters Ollama's Modelfile parser drops (no-break spaces, zero-width joiners)"
        )
        lines += [
            f"# SYSTEM is left out: the training system prompt has {why}, and the format has no escape;",
            "# send it as each request's system message",
            "",
        ]
    elif system:
        lines += [f'SYSTEM """{system}"""', ""]
    lines += [f'PARAMETER stop "{s}"' for s in stop_tokens(tokenizer, renderer.stop_ids)]
    if num_ctx:
        lines += [f"# beyond {num_ctx} tokens llama.cpp switches to the long-context rotary factors"]
        lines += [f"PARAMETER num_ctx {num_ctx}"]
    lines += ["PARAMETER temperature 0", ""]
    path = gguf_path.with_suffix(".Modelfile")
    atomic_write_text(path, "\n".join(lines))
    return path
