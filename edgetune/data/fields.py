"""Field checks shared by every row layout: one bad field becomes one `BadRow` naming its path."""

from __future__ import annotations

import json
from typing import Any

ROLES = ("system", "user", "assistant")


class BadRow(Exception):
    """A row that cannot be used; the loader adds file:line in front of the field path.

    `layout` marks a problem with the file's layout rather than with this row (preference data, a
    forced format that does not fit): skipping bad rows would skip them all, so it is not offered.
    """

    def __init__(self, field_path: str, reason: str, layout: bool = False):
        super().__init__(f"{field_path}: {reason}" if field_path else reason)
        self.layout = layout


JSON_KINDS = {type(None): "null", bool: "true/false", int: "a number", float: "a number", str: "a string"}
JSON_KINDS |= {list: "a list", dict: "an object"}


def shown(value: Any) -> str:
    """A field's value as the file spells it: JSON where it is JSON (null, "user"), else Python's
    form (a Parquet file's bytes)."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def kind_of(value: Any) -> str:
    """What a value is, in the file's own terms: JSON says null and object, not NoneType and dict."""
    return JSON_KINDS.get(type(value), type(value).__name__)


def blank(value: Any) -> bool:
    """No text: null, or only whitespace."""
    return value is None or (isinstance(value, str) and not value.strip())


def nonempty_str(value: Any, field_path: str) -> str:
    if not isinstance(value, str):
        raise BadRow(field_path, f"expected a string, got {kind_of(value)}")
    if not value.strip():
        raise BadRow(field_path, "is empty")
    return value


Conversation = tuple[tuple[tuple[str, str], ...], tuple[int, ...]]  # (role, content) turns; untrained ones


REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")


def refuse_unrendered(turn: dict[str, Any], field_path: str) -> None:
    """What a turn holds besides its text that edgetune would not render, so training would leave
    it out unsaid: a tool call (the model would learn to announce one and never make it), a
    reasoning trace (it would learn the answer without the thinking it came from)."""
    if turn.get("tool_calls") or turn.get("function_call"):  # its content is null: say why first
        raise BadRow(field_path, "a tool call (tool and function turns are not supported)")
    for key in REASONING_KEYS:
        if not blank(turn.get(key)):
            raise BadRow(
                f"{field_path}.{key}",
                "a reasoning trace, which edgetune does not render (it trains on content alone): write it "
                "into content as the model's template does (<think>...</think> for Qwen3), or drop it",
            )
    name = turn.get("name")
    if isinstance(name, str) and name.startswith("example_"):  # OpenAI's few-shot turns
        raise BadRow(
            f"{field_path}.name",
            f"{name!r}: a few-shot example written as a named system turn, which edgetune does not "
            "render: write it as a user turn and an assistant turn of weight 0",
        )
    if not blank(name):  # the speakers of a chat among several would all be one user
        raise BadRow(
            f"{field_path}.name",
            "a speaker's name, which edgetune does not render (chat templates take role and content): "
            'write it into content ("Alice: ..."), or drop it',
        )


def content_text(turn: dict[str, Any], key: str, field_path: str) -> str:
    """A turn's text at `key`: a non-empty string, said plainly where an export wrote it otherwise
    (a list of content parts, or a refusal beside null content)."""
    value = turn.get(key)
    if isinstance(value, list) and value and all(isinstance(p, dict) for p in value):
        kinds = sorted({str(p.get("type")) for p in value} - {"text"})
        raise BadRow(
            f"{field_path}.{key}",
            f"a list of content parts holding {', '.join(kinds)}: edgetune trains on text alone"
            if kinds
            else "a list of text parts: edgetune reads content as one string; join the parts' text",
        )
    if value is None and not blank(turn.get("refusal")):
        raise BadRow(f"{field_path}.{key}", "null, with the reply in refusal: write it as the content")
    return nonempty_str(value, f"{field_path}.{key}")


def refuse_tool_definitions(row: dict[str, Any]) -> None:
    """A row's tool list (`tools`, `functions`): edgetune renders none, and a chat trained without
    the tools it could have called teaches the model to answer without them."""
    for key in ("tools", "functions"):
        if row.get(key):
            raise BadRow(
                key,
                "tool definitions, which edgetune does not render (tool and function calling is not "
                "supported): write them into the system prompt as text, or drop the field",
            )


def checked_turns(
    turns: list[tuple[str, str]], field_path: str, untrained: tuple[int, ...] = ()
) -> Conversation:
    """A conversation edgetune can learn from: at least one assistant turn that carries loss, a
    system turn only first."""
    if not any(r == "assistant" for r, _ in turns):
        raise BadRow(field_path, "has no assistant turn to learn from")
    if all(i in untrained for i, (r, _) in enumerate(turns) if r == "assistant"):
        raise BadRow(field_path, "every assistant turn has weight 0: there is nothing to learn from")
    if any(r == "system" for r, _ in turns[1:]):
        raise BadRow(field_path, "a system message is only allowed first")
    if not any(learnt_reply(turns, i, untrained) for i in range(len(turns))):
        raise BadRow(field_path, "no assistant turn follows a user turn: there is nothing to learn from")
    return tuple(turns), untrained


def learnt_reply(turns, i: int, untrained: tuple[int, ...] = ()) -> bool:
    """Whether turn i of (role, content) `turns` carries loss: an assistant turn not of weight 0,
    with a user turn before it (a greeting before any prompt is context: nothing asked for it)."""
    return turns[i][0] == "assistant" and i not in untrained and any(r == "user" for r, _ in turns[:i])


def weight_allows_loss(turn: dict[str, Any], role: str, field_path: str) -> bool:
    """An assistant turn's `weight` (OpenAI's fine-tuning files, ShareGPT exports): 1 or absent, the
    turn carries loss; 0, it is context only. Another turn is context whatever it says: 0 (exports
    that weight every turn, as SlimOrca's does) is read, 1 is refused (only replies are learnt)."""
    if turn.get("weight") is None:  # absent, or null (Parquet gives every turn the column)
        return True
    weight = turn["weight"]
    if isinstance(weight, bool) or weight not in (0, 1):
        raise BadRow(f"{field_path}.weight", f"expected 0 or 1, got {weight!r}")
    if role != "assistant" and weight == 1:
        raise BadRow(
            f"{field_path}.weight", f"1 on a {role} turn: only an assistant turn is learnt (0: context)"
        )
    return weight == 1 or role != "assistant"  # a prompt's weight 0 changes nothing: it is never learnt
