"""The shipped chat template's default system prompt, made the one the model was trained under.

Some chat templates write a system prompt of their own when a chat has none (SmolLM2's "You are a
helpful AI assistant named SmolLM, trained by Hugging Face", Qwen2.5's "You are Qwen, created by
Alibaba Cloud"). A model tuned on chats that all carried another system prompt never saw that
default: a front-end that renders the file's template with the user's messages alone (LM Studio,
llama-server, llama-cpp-python, transformers) prompted it under the base model's persona, and the
demo's model then answered with made-up JSON. Where the default is a piece of text in the
template's source, it is replaced there by the trained prompt; every other rendering is checked to
be what it was, and where any is not (or the default is built otherwise), the template is kept.
"""

from __future__ import annotations

from collections.abc import Callable

from edgetune.export.modelfile import PROBE
from edgetune.export.modelfile import SYSTEM_PROBE as MARK

Render = Callable[..., str]  # (template, messages, tools=None) -> text with a generation prompt
# one tool, for templates that write their system turn otherwise when a chat offers tools
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "probe",
            "description": PROBE,
            "parameters": {"type": "object", "properties": {}},
        },
    }
]


def jinja_literal_text(text: str) -> str:
    """`text` as it may stand inside a Jinja string literal quoted either way."""
    escapes = {"\\": "\\\\", "'": "\\'", '"': '\\"', "\n": "\\n", "\r": "\\r"}
    return "".join(escapes.get(c, c) for c in text)


def with_trained_default(template: str, system: str, render: Render) -> str | None:
    """`template` whose default system prompt is `system`, or None where it writes none, already
    writes `system`, or cannot be changed so that nothing else renders otherwise (chats of one turn
    and of several, with a system prompt given and without, and offered a tool where the template
    takes tools). `render(template, messages, tools=None)` renders with a generation prompt."""
    user = [{"role": "user", "content": PROBE}]
    try:
        bare = render(template, user)
        if bare == render(template, [{"role": "system", "content": system}, *user]):
            return None  # its default is the trained prompt already (training rendered it)
        before, found, after = render(template, [{"role": "system", "content": MARK}, *user]).partition(MARK)
    except Exception:  # a template that refuses these chats: the shipped one stays as it is
        return None
    if not found or not (bare.startswith(before) and bare.endswith(after)):
        return None  # it drops system turns, or writes none without one: no default to replace
    default = bare[len(before) : len(bare) - len(after)]
    if not default.strip() or default not in template:
        return None  # built from parts: no text to replace
    # inside a string literal it is written escaped; in the template's text, as it is. Every place
    # it is written goes: Qwen2.5's says it twice, for chats with tools and without
    for written in (jinja_literal_text(system), system):
        patched = template.replace(default, written)
        if _renders_as_trained(patched, template, system, render):
            return patched
    return None


def _renders_as_trained(patched: str, template: str, system: str, render: Render) -> bool:
    """Whether `patched` renders chats without a system turn as `template` renders them under
    `system`, and chats with one as `template` does."""
    user = [{"role": "user", "content": PROBE}]
    try:
        for chat in (user, [*user, {"role": "assistant", "content": PROBE}, *user]):
            marked = [{"role": "system", "content": MARK}, *chat]
            trained = [{"role": "system", "content": system}, *chat]
            if render(patched, chat) != render(template, trained) or render(patched, marked) != render(
                template, marked
            ):
                return False
    except Exception:  # e.g. a system text that closes a literal and breaks the template
        return False
    try:
        offered = render(template, [{"role": "system", "content": system}, *user], tools=TOOLS)
    except Exception:
        return True  # a template that takes no tools: nothing more to render alike
    try:
        return render(patched, user, tools=TOOLS) == offered
    except Exception:
        return False
