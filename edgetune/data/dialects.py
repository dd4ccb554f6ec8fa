"""Row layouts that other fine-tuning tools popularised, read as conversations.

- alpaca: `{"instruction", "input", "output"}`, with optional `system` and `history` (a list of
  earlier `[instruction, answer]` pairs). The user turn is the instruction, then a blank line and
  the input when there is one; the output is the assistant turn that carries the loss.
- sharegpt: `{"conversations": [{"from": "human|gpt|system", "value": ...}]}`, with an optional
  top-level `system`. Turns written as `{"role", "content"}` are read too.

Both become edgetune's messages examples, so they are rendered with the model's chat template and
the loss falls on the assistant turns, exactly as for a messages file.
"""

from __future__ import annotations

import json
from typing import Any

from edgetune.data.fields import (
    BadRow,
    Conversation,
    blank,
    checked_turns,
    content_text,
    kind_of,
    nonempty_str,
    refuse_unrendered,
    shown,
    weight_allows_loss,
)

SPEAKERS = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
}


def json_list(value: Any, field_path: str) -> Any:
    """A list field; CSV and Parquet carry it as a JSON string."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise BadRow(
                field_path,
                "expected a list, or that list as JSON text; got a string that is invalid JSON "
                f"({exc.msg.removesuffix(' at')} at character {exc.pos + 1})",
            ) from None
        except RecursionError:
            raise BadRow(field_path, "JSON nested too deeply to be a dataset field") from None
    return value


def _optional_str(row: dict[str, Any], key: str) -> str:
    """A field that may be absent, null (Parquet) or empty (an empty CSV cell)."""
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRow(key, f"expected a string, got {kind_of(value)}")
    return value


def with_system(row: dict[str, Any], conversation: Conversation, field_path: str) -> Conversation:
    """The turns after the row's top-level `system` prompt where it has one, and which of them are
    untrained (weight 0)."""
    turns, untrained = conversation
    system = _optional_str(row, "system")
    if not system.strip():
        return tuple(turns), tuple(untrained)
    if turns and turns[0][0] == "system":
        raise BadRow("system", f"given twice: here and as the first turn of {field_path}")
    return (("system", system), *turns), tuple(i + 1 for i in untrained)


def alpaca_turns(row: dict[str, Any]) -> Conversation:
    instruction, extra = _optional_str(row, "instruction"), _optional_str(row, "input")
    user = "\n\n".join(part for part in (instruction, extra) if part.strip())
    if not user:
        said = "missing" if "instruction" not in row else "empty"
        raise BadRow("instruction", f"is {said}, and so is input: there is no request to answer")
    given = row.get("history")
    history = [] if given is None or given == "" else json_list(given, "history")  # 0 or false is no list
    if not isinstance(history, list):
        raise BadRow("history", "expected a list of [instruction, answer] pairs")
    turns: list[tuple[str, str]] = []
    for i, pair in enumerate(history):
        if not isinstance(pair, list) or len(pair) != 2:
            raise BadRow(f"history[{i}]", "expected an [instruction, answer] pair")
        turns += [
            ("user", nonempty_str(pair[0], f"history[{i}][0]")),
            ("assistant", nonempty_str(pair[1], f"history[{i}][1]")),
        ]
    if "output" not in row:
        raise BadRow("output", "missing")
    turns += [("user", user), ("assistant", nonempty_str(row["output"], "output"))]
    turns, _ = with_system(row, (tuple(turns), ()), "history")
    return checked_turns(list(turns), "output")


def sharegpt_turns(row: dict[str, Any]) -> Conversation:
    convo = json_list(row.get("conversations"), "conversations")
    if not isinstance(convo, list) or not convo:
        raise BadRow("conversations", "expected a non-empty list of {from, value} objects")
    turns, untrained = [], []
    for i, turn in enumerate(convo):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise BadRow(where, f"expected an object, got {kind_of(turn)}")
        # by value, not key: Parquet gives every turn both styles' columns, the other's null
        spoken = turn.get("from") is not None or turn.get("role") is None
        who_key, text_key = ("from", "value") if spoken else ("role", "content")
        who = turn.get(who_key)
        role = SPEAKERS.get(who.lower()) if isinstance(who, str) else None
        if role is None:
            raise BadRow(
                f"{where}.{who_key}",
                f"unknown speaker {shown(who)}; expected one of {', '.join(SPEAKERS)} "
                "(tool and function turns are not supported)",
            )
        refuse_unrendered(turn, where)
        if role == "system" and blank(turn.get(text_key)):
            continue  # an empty system turn (exports write one): no system prompt, as if absent
        if role == "system" and turns:
            raise BadRow(where, "a system message is only allowed first")
        turns.append((role, content_text(turn, text_key, where)))
        if not weight_allows_loss(turn, role, where):
            untrained.append(len(turns) - 1)
    turns, shifted = with_system(row, (tuple(turns), tuple(untrained)), "conversations")
    return checked_turns(list(turns), "conversations", shifted)
