"""Reading dataset files (JSONL, CSV, Parquet) into validated examples.

Every example remembers where it came from (file and line), so any later complaint names it. A bad
row raises DataError naming file:line and the field, unless skip_bad_rows is on, in which case it
is counted and reported.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetune.data.dialects import alpaca_turns, json_list, sharegpt_turns
from edgetune.data.fields import ROLES, BadRow, checked_turns, nonempty_str
from edgetune.errors import DataError

# the row layouts a file may be in; alpaca and sharegpt rows are read as messages examples
FORMATS = ("messages", "prompt_completion", "text", "alpaca", "sharegpt")
SUFFIXES = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
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

    def key(self) -> str:
        """Identity for exact-duplicate detection."""
        return json.dumps([self.format, self.messages, self.prompt, self.completion, self.text])

    def input_turns(self) -> tuple[tuple[str, str], ...] | None:
        """The input side, as (role, content) turns: those before the last assistant turn, or the
        prompt; None for a text row, which has no separate answer."""
        if self.format == "messages":
            last = max(i for i, (role, _) in enumerate(self.messages) if role == "assistant")
            return self.messages[:last]
        if self.format == "prompt_completion":
            return (("user", self.prompt),)
        return None

    def prompt_key(self) -> str:
        """Identity of the input side only: a test example whose input is in train has leaked."""
        turns = self.input_turns()
        return json.dumps(["text", self.text] if turns is None else [self.format, turns])

    def as_messages(self) -> list[dict[str, str]]:
        if self.format == "messages":
            return [{"role": r, "content": c} for r, c in self.messages]
        if self.format == "prompt_completion":
            return [
                {"role": "user", "content": self.prompt},
                {"role": "assistant", "content": self.completion},
            ]
        raise ValueError("a text example has no messages")

    def reference(self) -> str:
        """The expected output used by task metrics: the last assistant turn or the completion."""
        if self.format == "messages":
            return [c for r, c in self.messages if r == "assistant"][-1]
        return self.completion if self.format == "prompt_completion" else self.text


@dataclass
class LoadResult:
    path: Path
    format: str
    examples: list[Example]
    skipped: list[str] = field(default_factory=list)  # "file:line: reason" of each skipped bad row


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


def _turns(value: Any, key: str, check: bool = True) -> tuple[tuple[str, str], ...]:
    """A list of {role, content} messages at field `key` (a JSON string from CSV or Parquet)."""
    msgs = json_list(value, key)
    if msgs is None:
        raise BadRow(key, "missing")
    if not isinstance(msgs, list) or not msgs:
        raise BadRow(key, "expected a non-empty list of {role, content} objects")
    turns = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise BadRow(f"{key}[{i}]", f"expected an object, got {type(m).__name__}")
        role = m.get("role")
        if role not in ROLES:
            raise BadRow(f"{key}[{i}].role", f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        turns.append((role, nonempty_str(m.get("content"), f"{key}[{i}].content")))
    return checked_turns(turns, key) if check else tuple(turns)


CONVERSATIONS = {
    "messages": lambda row: _turns(row.get("messages"), "messages"),
    "alpaca": alpaca_turns,
    "sharegpt": sharegpt_turns,
}


def parse_row(row: Any, fmt: str) -> Example:
    if not isinstance(row, dict):
        raise BadRow("", f"expected a JSON object, got {type(row).__name__}")
    if fmt in CONVERSATIONS:
        return Example("messages", messages=CONVERSATIONS[fmt](row))
    if fmt == "prompt_completion":
        for key in ("prompt", "completion"):
            if key not in row:
                raise BadRow(key, "missing")
        if isinstance(row["prompt"], list) and isinstance(row["completion"], list):
            # TRL's conversational form: the prompt turns, then the completion turns
            turns = _turns(row["prompt"], "prompt", check=False) + _turns(
                row["completion"], "completion", False
            )
            return Example("messages", messages=checked_turns(list(turns), "completion"))
        return Example(
            fmt,
            prompt=nonempty_str(row["prompt"], "prompt"),
            completion=nonempty_str(row["completion"], "completion"),
        )
    if "text" not in row:
        raise BadRow("text", "missing")
    return Example("text", text=nonempty_str(row["text"], "text"))


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("r", encoding="utf-8", errors="strict") as f:
        line_no = 0
        try:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield line_no, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield line_no, BadRow("", f"invalid JSON ({exc.msg} at column {exc.colno})")
        except UnicodeDecodeError:
            raise DataError(f"{path}:{line_no + 1}: not valid UTF-8 text") from None


def _iter_csv(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("r", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise DataError(f"{path}:1: empty CSV file (expected a header row)")
        for row in reader:
            # a record may span lines; line_num is the line where it ends, which is where it is visible
            yield reader.line_num, {k: v for k, v in row.items() if k is not None}


def _iter_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    # Parquet has no lines: "line" is the 1-based row number
    yield from enumerate(table.to_pylist(), start=1)


def iter_raw_rows(path: Path) -> Iterator[tuple[int, Any]]:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown dataset file type {path.suffix!r}; use .jsonl, .csv or .parquet")
    if path.exists() and not path.is_file():
        # fingerprints hash it and preparation reads it again: a pipe would be empty the second time
        raise DataError(f"{path}: not a regular file (a directory, pipe or device); a dataset must be a file")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return {"jsonl": _iter_jsonl, "csv": _iter_csv, "parquet": _iter_parquet}[kind](path)


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
    detected = None if fmt == "auto" else fmt
    for line_no, row in iter_raw_rows(path):
        where = f"{path}:{line_no}"
        try:
            if isinstance(row, BadRow):
                raise row
            if detected is None:
                detected = detect_format(row) if isinstance(row, dict) else None
                if detected is None:
                    keys = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
                    raise BadRow(
                        "",
                        f"cannot tell the row format from its fields ({keys}); expected 'messages', "
                        "'conversations' (ShareGPT), 'instruction'+'output' (Alpaca), "
                        "'prompt'+'completion', or 'text'",
                    )
            ex = parse_row(row, detected)
        except BadRow as exc:
            forced = fmt != "auto"
            if detected and isinstance(row, dict) and (hint := _layout_hint(row, detected, forced)):
                # a forced format that does not fit fails every row alike; a stray row in a file whose
                # format was detected is one bad row, and skipping it is the right advice
                exc = BadRow("", f"{exc}{hint}", layout=forced or exc.layout)
            if not skip_bad_rows:
                advice = "" if exc.layout else " (data.skip_bad_rows or --skip-bad-rows skips bad rows)"
                raise DataError(f"{where}: {exc}{advice}") from None
            skipped.append(f"{where}: {exc}")
            continue
        examples.append(Example(ex.format, ex.messages, ex.prompt, ex.completion, ex.text, source=where))
    if not examples:
        raise DataError(
            f"{path}: no usable examples" + (f" ({len(skipped)} bad rows skipped)" if skipped else "")
        )
    return LoadResult(path=path, format=detected or fmt, examples=examples, skipped=skipped)
