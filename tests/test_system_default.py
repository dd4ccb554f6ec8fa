"""A chat template's default system prompt, in the shipped files, is the one the model trained under:
front-ends that render the file's template with the user's messages alone prompted the tuned model
under the base model's persona (the demo's then answered with made-up JSON)."""

from __future__ import annotations

import pytest
from conftest import build_tiny_model, build_tokenizer, chat_row, write_jsonl

from edgetune.export.system_default import with_trained_default

GENERIC = "You are a generic assistant."
# a system turn of its own when a chat has none, in a string literal (SmolLM2's and Qwen2.5's way)
IN_LITERAL = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + GENERIC + "<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# the same default written as the template's own text
IN_TEXT = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\n" + GENERIC + "<|im_end|>\n{% endif %}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TRAINED = "Reply with JSON only: {\"port\": 'n'}\nNo prose. \\ Réponse 日本"


# the default said twice, for chats offered tools and for the others (Qwen2.5's way)
WITH_TOOLS = (
    "{% if tools %}{% if messages[0]['role'] == 'system' %}{{ '<|im_start|>system\\n' + messages[0]['content'] }}"
    "{% else %}{{ '<|im_start|>system\\n"
    + GENERIC
    + "' }}{% endif %}{{ '\\ntools: ' + tools|length|string + "
    "'<|im_end|>\\n' }}{% elif messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
    + GENERIC
    + "<|im_end|>\\n' }}"
    "{% endif %}{% for message in messages %}{% if not (tools and message['role'] == 'system') %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# offered tools without a system prompt, it writes a text of its own in place of the default
TOOLS_TEXT = WITH_TOOLS.replace(
    "{% else %}{{ '<|im_start|>system\\n" + GENERIC + "' }}",
    "{% else %}{{ '<|im_start|>system\\nUse the tools.' }}",
)


def render(template: str, messages: list[dict[str, str]], tools: list | None = None) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    (text,), _ = render_jinja_template(
        [messages], chat_template=template, add_generation_prompt=True, tools=tools
    )
    return text


@pytest.mark.parametrize(
    "template", [IN_LITERAL, IN_TEXT, WITH_TOOLS], ids=["string literal", "template text", "said twice"]
)
def test_the_default_system_prompt_becomes_the_trained_one_and_nothing_else_renders_otherwise(template):
    patched = with_trained_default(template, TRAINED, render)
    assert patched is not None and GENERIC not in patched
    user = [{"role": "user", "content": "link down on eth0"}]
    chats = [user, [*user, {"role": "assistant", "content": "{}"}, *user]]
    for chat in chats:
        assert render(patched, chat) == render(template, [{"role": "system", "content": TRAINED}, *chat])
        given = [{"role": "system", "content": "Be brief."}, *chat]
        assert render(patched, given) == render(template, given)  # a system prompt given is kept
    tools = [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {}}}]
    trained = [{"role": "system", "content": TRAINED}, *user]
    assert render(patched, user, tools) == render(template, trained, tools)


def test_a_template_without_a_default_or_with_the_trained_one_or_without_system_turns_is_kept():
    chatml = IN_LITERAL.replace(GENERIC, "")  # an empty system turn, not a prompt to replace
    no_default = (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    drops_system = no_default.replace(
        "{% for message in messages %}", "{% for message in messages if message['role'] != 'system' %}"
    )
    built = IN_LITERAL.replace(
        f"'<|im_start|>system\\n{GENERIC}<|im_end|>\\n'",
        "'<|im_start|>system\\nYou are ' + 'a generic assistant.<|im_end|>\\n'",
    )
    for template in (chatml, no_default, drops_system, built, TOOLS_TEXT):
        assert with_trained_default(template, TRAINED, render) is None, template
    assert with_trained_default(IN_LITERAL, GENERIC, render) is None  # trained under the default itself
    refuses = "{{ raise_exception('no') }}"
    assert with_trained_default(refuses, TRAINED, render) is None


def test_a_merged_model_and_its_gguf_ship_the_trained_system_prompt_as_the_templates_default(tmp_path):
    """Through tune, merge and export, then rendered as llama-cpp-python's chat handler renders a
    GGUF's template for a request without a system message."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from test_tune import make_recipe
    from transformers import AutoTokenizer

    from edgetune.export.layout import gguf_field
    from edgetune.export.run import export
    from edgetune.merge import merge
    from edgetune.tune.run import tune

    model = build_tiny_model(tmp_path, build_tokenizer(chat_template=IN_LITERAL), "LlamaForCausalLM")
    recipe = make_recipe(tmp_path, model, max_steps=2, eval_steps=2, save_steps=2)
    rows = [chat_row(f"log {i}: link down", f'{{"port": {i}}}', system="Reply with JSON.") for i in range(40)]
    write_jsonl(tmp_path / "data.jsonl", rows)
    run = tune(str(recipe)).run_dir
    assert AutoTokenizer.from_pretrained(run / "adapter").chat_template == IN_LITERAL  # as trained
    merge(run)
    shipped = AutoTokenizer.from_pretrained(run / "merged").chat_template
    assert shipped == with_trained_default(IN_LITERAL, "Reply with JSON.", render)
    exported = export(run, ["gguf", "onnx"], ["f32", "fp32"])
    assert all(row.passed for row in exported["parity"]), [row.failures for row in exported["parity"]]
    assert AutoTokenizer.from_pretrained(run / "export" / "onnx" / "fp32").chat_template == shipped
    (gguf,) = exported["gguf"].artifacts
    template = gguf_field(gguf.path, "tokenizer.chat_template")
    assert template == shipped
    request = [{"role": "user", "content": "log 7: link down"}]
    prompt = Jinja2ChatFormatter(template, eos_token="<|im_end|>", bos_token="")(messages=request).prompt
    assert prompt == render(IN_LITERAL, [{"role": "system", "content": "Reply with JSON."}, *request])
