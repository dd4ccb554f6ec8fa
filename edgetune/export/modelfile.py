"""An Ollama Modelfile beside each GGUF: the training chat format, its stop tokens, greedy defaults.

Ollama's TEMPLATE is a Go template, and a Jinja chat template cannot be translated in general, so
we write the Go form of the template families we recognise (ChatML, Llama 3, edgetune's fallback)
and say so in a comment otherwise (Ollama then falls back to its own detection from the GGUF). When
every training example carries the same system message, it becomes the SYSTEM line: the tuned
model answers in the format it learned only with the prompt it learned it under.
"""

from __future__ import annotations

from pathlib import Path

from edgetune.rundir import atomic_write_text

CHATML = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)
LLAMA3 = (
    "<|begin_of_text|>{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
FALLBACK = (
    "{{- if .System }}{{ .System }}\n\n{{ end }}"
    '{{- range .Messages }}{{ if eq .Role "user" }}### User:\n{{ .Content }}\n\n'
    '{{ else }}### Assistant:\n{{ .Content }}{{ "{eos}" }}\n\n{{ end }}{{ end }}### Assistant:\n'
)


def template_family(chat_template: str | None) -> str | None:
    if not chat_template:
        return None
    if "<|im_start|>" in chat_template:
        return "chatml"
    if "<|start_header_id|>" in chat_template:
        return "llama3"
    if "### Assistant:" in chat_template:
        return "edgetune-fallback"
    return None


def stop_tokens(tokenizer, stop_ids=()) -> list[str]:
    """The model's own stop ids (generation_config's, e.g. Gemma's <end_of_turn>), its EOS, and the
    end-of-turn tokens of the common chat formats that its vocabulary has."""
    stops = [tokenizer.convert_ids_to_tokens(i) for i in sorted(stop_ids)]
    if tokenizer.eos_token and tokenizer.eos_token not in stops:
        stops.append(tokenizer.eos_token)
    for candidate in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>"):
        if candidate in tokenizer.get_vocab() and candidate not in stops:
            stops.append(candidate)
    return stops


def shared_system_prompt(examples) -> str | None:
    prompts = {
        next((c for r, c in ex.messages if r == "system"), None) for ex in examples if ex.format == "messages"
    }
    return prompts.pop() if len(prompts) == 1 and None not in prompts else None


def write_modelfile(gguf_path: Path, tokenizer, system: str | None, stop_ids=()) -> Path:
    family = template_family(tokenizer.chat_template)
    lines = [
        f"# Ollama Modelfile written by edgetune for {gguf_path.name}",
        f"# ollama create my-model -f {gguf_path.stem}.Modelfile && ollama run my-model",
        "",
        f"FROM ./{gguf_path.name}",
        "",
    ]
    template = {
        "chatml": CHATML,
        "llama3": LLAMA3,
        "edgetune-fallback": FALLBACK.replace("{eos}", tokenizer.eos_token or ""),
    }.get(family or "")
    if template:
        lines += [f'TEMPLATE """{template}"""', ""]
    else:
        lines += [
            "# The training chat template has no known Go form; Ollama reads it from the GGUF metadata.",
            "",
        ]
    if system:
        lines += [f'SYSTEM """{system}"""', ""]
    lines += [f'PARAMETER stop "{s}"' for s in stop_tokens(tokenizer, stop_ids)]
    lines += ["PARAMETER temperature 0", ""]
    path = gguf_path.with_suffix(".Modelfile")
    atomic_write_text(path, "\n".join(lines))
    return path
