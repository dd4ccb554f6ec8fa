"""Dataset rows (read from their files by data/files.py) into validated examples.

Every example remembers where it came from (file and line), so any later complaint names it. A bad
row raises DataError naming file:line and the field, unless skip_bad_rows is on, in which case it
is counted and reported.
"""

from __future__ import annotations

import dataclasses
import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetune.data.dialects import alpaca_turns, json_list, sharegpt_turns, with_system
from edgetune.data.fields import (
    ROLES,
    BadRow,
    Conversation,
    blank,
    checked_turns,
    content_text,
    kind_of,
    learnt_reply,
    nonempty_str,
    refuse_tool_definitions,
    refuse_unrendered,
    shown,
    weight_allows_loss,
)
from edgetune.data.files import iter_raw_rows
from edgetune.errors import DataError

# the row layouts a file may be in; alpaca and sharegpt rows are read as messages examples
TOOL_ROLES = ("tool", "function", "ipython")
FORMATS = ("messages", "prompt_completion", "text", "alpaca", "sharegpt")
# the row fields each layout reads; data check counts the others a file fills (an id, a label)
READ_FIELDS = {
    "messages": {"messages", "system"},
    "prompt_completion": {"prompt", "completion", "system"},
    "text": {"text"},
    "alpaca": {"instruction", "input", "output", "system", "history"},
    "sharegpt": {"conversations", "system"},
}


@dataclass(frozen=True)
class Example:
    """One validated training example: a conversation, a prompt and completion, or plain text."""

    format: str
    messages: tuple[tuple[str, str], ...] = ()  # (role, content), for "messages"
    prompt: str = ""
    completion: str = ""
    text: str = ""
    source: str = field(default="", compare=False, hash=False)  # "file:line"
    untrained: tuple[int, ...] = ()  # messages' assistant turns of weight 0: context, no loss

    def key(self) -> str:
        """The row's identity as written (bench reports name examples by its hash)."""
        return json.dumps(self._fields())

    def _fields(self) -> list:
        weights = [list(self.untrained)] if self.untrained else []  # rows without weights keep their keys
        return [self.format, self.messages, self.prompt, self.completion, self.text, *weights]

    def match_key(self) -> str:
        """Identity for duplicates and leakage: the same text in another Unicode normal form (an
        "é" typed as e and a combining accent) is the same row."""
        return unicodedata.normalize("NFC", json.dumps(self._fields(), ensure_ascii=False))

    def input_turns(self) -> tuple[tuple[str, str], ...] | None:
        """The input side, as (role, content) turns: those before the last assistant turn, or the
        prompt; None for a text row, which has no separate answer."""
        if self.format == "messages":
            return self.messages[: self.answer_index()]
        if self.format == "prompt_completion":
            return (("user", self.prompt),)
        return None

    def prompt_key(self, turns: tuple[tuple[str, str], ...] | None = None) -> str:
        """Identity of the input side only (or of `turns`, one of reply_inputs): a test example
        whose input is in train has leaked."""
        turns = self.input_turns() if turns is None else turns
        fields = ["text", self.text] if turns is None else [self.format, turns]
        return unicodedata.normalize("NFC", json.dumps(fields, ensure_ascii=False))

    def reply_inputs(self) -> list[tuple[tuple[str, str], ...] | None]:
        """The input of each reply the row learns, not only its last (the turns before it): a
        held-out example asking any of them is answered in training. [None] for a text row."""
        if self.format != "messages":
            return [self.input_turns()]
        msgs = self.messages
        return [msgs[:i] for i in range(len(msgs)) if learnt_reply(msgs, i, self.untrained)] or [
            self.input_turns()
        ]

    def as_messages(self) -> list[dict[str, str]]:
        if self.format == "messages":
            return [{"role": r, "content": c} for r, c in self.messages]
        if self.format == "prompt_completion":
            return [
                {"role": "user", "content": self.prompt},
                {"role": "assistant", "content": self.completion},
            ]
        raise ValueError("a text example has no messages")

    def answer_index(self) -> int:
        """The turn a benchmark asks the model for: the last assistant turn that is learnt (weight
        not 0, a user turn before it), else the last assistant turn."""
        replies = [i for i, (role, _) in enumerate(self.messages) if role == "assistant"]
        learnt = [i for i in replies if learnt_reply(self.messages, i, self.untrained)]
        return (learnt or replies)[-1]

    def reference(self) -> str:
        """The expected output used by task metrics: the answer_index turn or the completion."""
        if self.format == "messages":
            return self.messages[self.answer_index()][1]
        return self.completion if self.format == "prompt_completion" else self.text


def in_file_order(examples: list[Example]) -> list[Example]:
    """Examples by file and line, as a list of rows to fix is read (held-out rows come in a hashed
    order)."""

    def place(ex: Example) -> tuple[str, int]:
        path, _, line = ex.source.rpartition(":")
        return (path, int(line)) if line.isdigit() else (ex.source, 0)

    return sorted(examples, key=place)


@dataclass
class LoadResult:
    path: Path
    format: str
    examples: list[Example]
    skipped: list[str] = field(default_factory=list)  # "file:line: reason" of each skipped bad row
    unread: dict[str, int] = field(default_factory=dict)  # a field the layout does not read: rows filling it


def detect_format(row: dict[str, Any]) -> str | None:
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "output" in row and ("instruction" in row or "input" in row):
        return "alpaca"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "text" in row:
        return "text"
    if "chosen" in row and "rejected" in row:
        raise BadRow(
            "",
            "this is preference data (chosen/rejected, for DPO-style training); edgetune learns from "
            "demonstrations: keep the chosen reply as the assistant turn of a messages row",
            layout=True,
        )
    return None


def _turns(value: Any, key: str, check: bool = True) -> Conversation:
    """A list of {role, content} messages at field `key` (a JSON string from CSV or Parquet)."""
    msgs = json_list(value, key)
    if msgs is None:
        raise BadRow(key, "missing")
    if not isinstance(msgs, list) or not msgs:
        raise BadRow(key, "expected a non-empty list of {role, content} objects")
    turns, untrained = [], []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise BadRow(f"{key}[{i}]", f"expected an object, got {kind_of(m)}")
        role = m.get("role")
        refuse_unrendered(m, f"{key}[{i}]")
        if role is None and "from" in m:
            raise BadRow(
                f"{key}[{i}]", "a ShareGPT turn ({from, value}): name the list conversations, not " + key
            )
        if role not in ROLES:
            raise BadRow(
                f"{key}[{i}].role",
                f"unknown role {shown(role)}; expected one of {', '.join(ROLES)}{_role_hint(role)}",
            )
        if role == "system" and blank(m.get("content")):
            continue  # an empty system turn (exports write one): no system prompt, as if absent
        if role == "system" and turns:
            raise BadRow(f"{key}[{i}]", "a system message is only allowed first")
        if "content" not in m:  # (a null one is "got null")
            raise BadRow(f"{key}[{i}].content", "missing")
        turns.append((role, content_text(m, "content", f"{key}[{i}]")))
        if not weight_allows_loss(m, role, f"{key}[{i}]"):
            untrained.append(len(turns) - 1)
    return checked_turns(turns, key, tuple(untrained)) if check else (tuple(turns), tuple(untrained))


def _role_hint(role: Any) -> str:
    if role in TOOL_ROLES:
        return " (tool and function turns are not supported)"
    if role == "developer":
        return " (OpenAI's newer name for system: write system)"
    return " (in lower case)" if isinstance(role, str) and role.lower() in ROLES else ""


def _messages_turns(row: dict[str, Any]) -> Conversation:
    turns, untrained = with_system(row, _turns(row.get("messages"), "messages", False), "messages")
    return checked_turns(list(turns), "messages", untrained)


CONVERSATIONS = {
    "messages": _messages_turns,
    "alpaca": alpaca_turns,
    "sharegpt": sharegpt_turns,
}


def _turn_list(value: Any) -> list | None:
    """A list of messages: itself, or (from CSV or Parquet, which hold no lists) the JSON text of
    one, as `[{"role": ...}, ...]`; None for a prompt or completion that is plain text."""
    if isinstance(value, list):
        return value
    if not isinstance(value, str) or not value.lstrip().startswith("[{"):
        return None
    try:
        turns = json.loads(value)
    except (json.JSONDecodeError, RecursionError):
        return None
    is_messages = (
        isinstance(turns, list) and turns and all(isinstance(t, dict) and "role" in t for t in turns)
    )
    return turns if is_messages else None


# tune and run take it from the recipe or --set; data check has a flag for it too
SKIP_ADVICE = "data.skip_bad_rows: true, or data check --skip-bad-rows, skips bad rows"


def _not_an_object(row: Any) -> str:
    said = f"expected a JSON object, got {kind_of(row)}"
    if isinstance(row, str) and row.lstrip().startswith("{"):
        try:
            json.loads(row)
        except (json.JSONDecodeError, RecursionError):
            return said
        return f"{said} holding one (a row written as JSON twice): write the object itself"
    return said


def _columns_not_rows(row: dict[str, Any]) -> bool:
    """pandas' DataFrame.to_json() default: each field an object of row number to value."""
    return bool(row) and all(
        isinstance(v, dict) and v and all(isinstance(k, str) and k.isdigit() for k in v) for v in row.values()
    )


def parse_row(row: Any, fmt: str) -> Example:
    if not isinstance(row, dict):
        raise BadRow("", _not_an_object(row))
    if _columns_not_rows(row):
        raise BadRow(
            "",
            "columns, not rows (each field maps row numbers to values, as pandas' to_json writes by "
            "default): write it with df.to_json(path, orient='records', lines=True)",
            layout=True,
        )
    refuse_tool_definitions(row)
    if fmt in CONVERSATIONS:
        turns, untrained = CONVERSATIONS[fmt](row)
        return Example("messages", messages=turns, untrained=untrained)
    if fmt == "prompt_completion":
        for key in ("prompt", "completion"):
            if key not in row:
                raise BadRow(key, "missing")
        if isinstance(row.get("label"), bool):  # TRL's unpaired preference layout (a text's label is a class)
            raise BadRow(
                "label",
                "unpaired preference data (each completion labelled good or bad, for KTO); edgetune learns "
                "every completion it is given: keep the rows labelled true, without the label",
                layout=True,
            )
        prompt_turns, completion_turns = _turn_list(row["prompt"]), _turn_list(row["completion"])
        if prompt_turns is not None and completion_turns is not None:
            # TRL's conversational form: the prompt turns, then the completion turns. Loss falls on
            # the completion only, as in TRL: a reply inside the prompt is context, like the question
            (prompt, _), (completion, after) = (
                with_system(row, _turns(prompt_turns, "prompt", False), "prompt"),
                _turns(completion_turns, "completion", False),
            )
            replies = (i for i, (role, _) in enumerate(prompt) if role == "assistant")
            untrained = (*replies, *(len(prompt) + i for i in after))
            turns, untrained = checked_turns([*prompt, *completion], "completion", untrained)
            return Example("messages", messages=turns, untrained=untrained)
        if not blank(row.get("system")):
            raise BadRow(
                "system",
                "a system prompt beside a plain prompt and completion, which edgetune does not render: "
                "write the row as messages (system, user and assistant turns), or drop the field",
            )
        return Example(
            fmt,
            prompt=nonempty_str(row["prompt"], "prompt"),
            completion=nonempty_str(row["completion"], "completion"),
        )
    if "text" not in row:
        raise BadRow("text", "missing")
    return Example("text", text=nonempty_str(row["text"], "text"))


def _layout_hint(row: dict[str, Any], fmt: str, forced: bool) -> str:
    """Why a row fails the file's format when it is fine in another layout."""
    try:
        looks = detect_format(row)
    except BadRow as exc:
        return f"; {exc}" if exc.layout else ""
    if looks in (None, fmt):
        return ""
    why = "data.format, or the train file's" if forced else "detected from the file's first row"
    return f"; the row looks like {looks!r}, but it is read as {fmt!r} ({why})"


def load_examples(path: str | Path, fmt: str = "auto", skip_bad_rows: bool = False) -> LoadResult:
    """Read and validate every row; the format is forced, or detected from the first good row."""
    path = Path(path)
    examples: list[Example] = []
    skipped: list[str] = []
    unread: dict[str, int] = {}
    detected = None if fmt == "auto" else fmt
    for line_no, row in iter_raw_rows(path):
        where = f"{path}:{line_no}"
        try:
            if isinstance(row, BadRow):
                raise row
            if detected is None:
                if not isinstance(row, dict):
                    raise BadRow("", _not_an_object(row))
                detected = detect_format(row)
                if detected is None:
                    keys = ", ".join(sorted(row))
                    tools = {"tools", "functions"} & set(row)  # xLAM's query/tools/answers, and others
                    raise BadRow(
                        "",
                        f"cannot tell the row format from its fields ({keys}); expected 'messages', "
                        "'conversations' (ShareGPT), 'instruction'+'output' (Alpaca), "
                        "'prompt'+'completion', or 'text'"
                        + ("; tool-calling layouts are not supported" if tools else ""),
                    )
            ex = parse_row(row, detected)
        except BadRow as exc:
            forced = fmt != "auto"
            if detected and isinstance(row, dict) and (hint := _layout_hint(row, detected, forced)):
                # a forced format that does not fit fails every row alike; a stray row in a file whose
                # format was detected is one bad row, and skipping it is the right advice
                exc = BadRow("", f"{exc}{hint}", layout=forced or exc.layout)
            if not skip_bad_rows:
                advice = "" if exc.layout else f" ({SKIP_ADVICE})"
                raise DataError(f"{where}: {exc}{advice}") from None
            skipped.append(f"{where}: {exc}")
            continue
        examples.append(dataclasses.replace(ex, source=where))
        for key in row.keys() - READ_FIELDS[detected]:
            if row[key] not in (None, "", [], {}):  # Parquet and CSV give every row every column
                unread[key] = unread.get(key, 0) + 1
    if not examples:
        first = f"; the first, {skipped[0]}" if skipped else ""  # every row may fail alike: say why
        raise DataError(
            f"{path}: no usable examples"
            + (f" ({len(skipped)} bad row{'s' * (len(skipped) != 1)} skipped{first})" if skipped else "")
        )
    return LoadResult(path=path, format=detected or fmt, examples=examples, skipped=skipped, unread=unread)
