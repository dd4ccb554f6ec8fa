"""Dataset files to raw rows: JSONL, a JSON array, CSV and Parquet, each row with its line.

Rows come out as they are in the file (dicts, or a BadRow for a line that is not a row); rows.py
validates them. Problems with the file itself (not UTF-8, an unterminated CSV quote, a header that
repeats a column) are a DataError naming file:line. Line numbers are those an editor shows.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgetune.data.fields import BadRow
from edgetune.errors import DataError

SUFFIXES = {
    ".jsonl": "jsonl",
    ".json": "json",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",  # Excel's "Text (Tab delimited)", pandas' to_csv(sep="\t"): quoted as CSV is
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
KINDS = ".jsonl, .json, .csv, .tsv or .parquet"
BOM = "\ufeff"
JSON_SPACE = re.compile(r"[ \t\n\r]*")
# csv's default cell limit is 128 KiB; a long document in one cell is a valid row
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def dataset_kind(path: Path) -> str:
    """The type (jsonl, json, csv, tsv or parquet) of a dataset file that is there, or a DataError."""
    kind = SUFFIXES.get(path.suffix.lower())
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if kind is None and path.is_dir():
        raise DataError(f"{path}: a directory; name the dataset file in it ({KINDS})")
    if kind is None:
        raise DataError(f"{path}: unknown dataset file type {path.suffix!r}; use {KINDS}")
    if not path.is_file():
        # fingerprints hash it and preparation reads it again: a pipe would be empty the second time
        raise DataError(f"{path}: not a regular file (a directory, pipe or device); a dataset must be a file")
    return kind


def check_data_files(cfg) -> None:
    """Each file a DataConfig names is there and of a known type: said before any model loads."""
    for key in ("train", "valid", "test"):
        if path := getattr(cfg, key):
            dataset_kind(Path(path))


def iter_raw_rows(path: Path) -> Iterator[tuple[int, Any]]:
    readers = {
        "jsonl": _iter_jsonl,
        "json": _iter_json,
        "csv": _iter_csv,
        "tsv": _iter_tsv,
        "parquet": _iter_parquet,
    }
    return readers[dataset_kind(path)](path)


def _utf8(path: Path, data: bytes, first_line: int = 1) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + data.count(b"\n", 0, exc.start)
        utf16 = first_line == 1 and data[:2] in (b"\xff\xfe", b"\xfe\xff")  # its byte order mark
        hint = (
            ": a UTF-16 file (its byte order mark); save it as UTF-8" if utf16 else _legacy(data, exc.start)
        )
        raise DataError(f"{path}:{line}: not valid UTF-8 text (byte {data[exc.start]:#04x}){hint}") from None


def _legacy(data: bytes, at: int) -> str:
    """The byte read as Windows-1252, the encoding Excel's "CSV" and Notepad's "ANSI" save in on
    Western Windows, where the whole chunk reads in it (é was "byte 0xe9" and no more)."""
    try:
        data.decode("cp1252")
    except UnicodeDecodeError:
        return ""
    return (
        f": text saved in another encoding (in Windows-1252, Excel's CSV on Windows, it reads "
        f"{data[at : at + 1].decode('cp1252')!r}); save it as UTF-8"
    )


def _has_lone_surrogate(value: Any) -> bool:
    """JSON may escape half of a UTF-16 pair (\\ud800) on its own: Python reads it, but it is no
    character, and the tokenizer fails on it much later."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def _checked(value: Any, text: str) -> Any:
    try:
        lone = "\\u" in text and _has_lone_surrogate(value)
    except RecursionError:
        return BadRow("", "JSON nested too deeply to be a dataset row")
    return (
        BadRow("", "a \\u escape names half a UTF-16 surrogate pair, which is no character")
        if lone
        else value
    )


def _row(text: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        # some of json's messages end in "at" ("Invalid control character at"): one "at" is enough
        return BadRow("", f"invalid JSON ({exc.msg.removesuffix(' at')} at column {exc.colno})")
    except RecursionError:
        return BadRow("", "JSON nested too deeply to be a dataset row")
    return _checked(value, text)


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Lines end in LF, CRLF or a lone CR (old Mac files), as editors count them: JSON text holds
    no raw CR but between tokens, where no JSONL writer puts one."""
    line_no, first = 0, True
    with path.open("rb") as f:
        for chunk in f:
            body = chunk.removesuffix(b"\n").removesuffix(b"\r")
            for raw in body.split(b"\r") if b"\r" in body else [body]:
                line_no += 1
                line = _utf8(path, raw, line_no)
                if line_no == 1:
                    line = line.removeprefix(BOM)
                if line.strip():
                    row = _row(line)
                    if first and isinstance(row, BadRow) and _pretty_printed(path):
                        where = (
                            "a .json dataset is an array of rows or has"
                            if path.suffix.lower() == ".json"
                            else "JSONL has"
                        )
                        raise DataError(  # every line would be a bad row, and "skip them" no advice
                            f"{path}:{line_no}: a row spread over several lines (pretty-printed JSON), where "
                            f"{where} one row per line: write each on one line (jq -c, or json.dumps "
                            "without indent)"
                        )
                    if first and _array_of_rows(line, row) and path.suffix.lower() != ".json":
                        turns = isinstance(row, list) and all(
                            isinstance(v, dict) and ("role" in v or "from" in v) for v in row
                        )
                        fix = (  # each line one conversation's messages, or the whole file one array
                            'a line of messages is written {"messages": [...]}'
                            if turns
                            else "an array of rows is read from a .json file: rename it"
                        )
                        raise DataError(  # every row would fail alike, each "expected a JSON object"
                            f"{path}:{line_no}: a JSON array, where JSONL has one object per line; {fix}"
                        )
                    first = False
                    yield line_no, row


def _pretty_printed(path: Path) -> bool:
    """Whether the file opens with a JSON object over several lines."""
    with path.open("rb") as f:
        head = f.read(1 << 24).decode("utf-8", errors="replace").removeprefix(BOM)
    start = len(head) - len(head.lstrip())
    try:
        value, end = json.JSONDecoder().raw_decode(head, start)
    except (json.JSONDecodeError, RecursionError):
        return False
    return isinstance(value, dict) and "\n" in head[start:end].replace("\r", "\n")


def _array_of_rows(line: str, row: Any) -> bool:
    """A JSONL file's first line opens an array of rows: `[{...}, ...]` on it, or `[` alone."""
    if isinstance(row, list):
        return any(isinstance(v, dict) for v in row)
    return line.strip() == "[" or line.lstrip().startswith("[{")


def _iter_json(path: Path) -> Iterator[tuple[int, Any]]:
    """A .json file: one JSON array of rows (how Alpaca and most hubs ship data), or JSONL."""
    text = _utf8(path, path.read_bytes()).removeprefix(BOM)
    start = len(text) - len(text.lstrip())
    if text[start : start + 1] != "[":
        _refuse_one_object(path, text)
        yield from _iter_jsonl(path)
        return
    if "\r" in text:  # old Mac line ends count as lines too (JSON allows no raw CR inside a string)
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        start = len(text) - len(text.lstrip())
    decoder, pos, line = json.JSONDecoder(), start + 1, 1 + text.count("\n", 0, start)

    def skip_space(at: int) -> int:
        nonlocal line
        end = JSON_SPACE.match(text, at).end()
        line += text.count("\n", at, end)
        return end

    pos = skip_space(pos)
    if text[pos : pos + 1] == "]":
        return
    while True:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            if exc.pos == pos and text[pos : pos + 1] == "]":  # "[{...}, {...},]"
                raise DataError(
                    f"{path}:{exc.lineno}: a comma after the array's last row (JSON allows none)"
                ) from None
            raise DataError(
                f"{path}:{exc.lineno}: invalid JSON in the array ({exc.msg.removesuffix(' at')} at column {exc.colno})"
            ) from None
        except RecursionError:
            raise DataError(f"{path}:{line}: JSON nested too deeply to be a dataset row") from None
        yield line, _checked(value, text[pos:end])
        line += text.count("\n", pos, end)
        pos = skip_space(end)
        after = text[pos : pos + 1]
        if after == "]":
            if text[pos + 1 :].strip():
                raise DataError(f"{path}:{line}: text after the closing ] of the array")
            return
        if after != ",":
            found = repr(after) if after else "the end of the file"
            raise DataError(f"{path}:{line}: expected , or ] between rows of the array, found {found}")
        pos = skip_space(pos + 1)


def _refuse_one_object(path: Path, text: str) -> None:
    """A .json file holding one object over several lines ({"data": [...]}) is no list of rows;
    read as JSONL it would fail on its first line with a message about a missing brace."""
    if text.count("\n", 0, len(text.rstrip())) == 0:
        return  # one line: one row, as JSONL reads it
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return  # JSONL after all, or broken: the line-by-line reader names the line
    if isinstance(value, dict):
        from edgetune.data.rows import detect_format

        try:
            one_row = detect_format(value) is not None
        except BadRow:
            one_row = True  # preference data: a row all the same
        if one_row:
            raise DataError(
                f"{path}: one row spread over several lines; a .json dataset is an array of rows "
                "([{...}, {...}]) or one row per line"
            )
        lists = [k for k, v in value.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
        hint = f"; its rows may be the {lists[0]!r} list: save that list alone" if lists else ""
        raise DataError(
            f"{path}: one JSON object, not rows: a .json dataset is an array of rows or one row per line{hint}"
        )


def _first_line(text: str) -> str:
    """The header's line: the first that is not blank."""
    return next((line for line in text.splitlines() if line.strip()), "")


def _comma_space(text: str) -> bool:
    """Whether the header is written `prompt, completion`: a hand-written file whose values follow
    ", " too, and whose first space belongs to no value."""
    try:
        cells = next(csv.reader([_first_line(text)]), [])
    except csv.Error:
        return False
    # csv drops every space after the comma: where a value may open with more (an indent), none is
    wider = re.search(r",(?: {2}|\t)", text)
    return len(cells) > 1 and all(c.startswith(" ") and c.strip() for c in cells[1:]) and not wider


def _row_problem(header: list[str], cells: list[str], mark: str = "comma") -> str | None:
    """Why a record with the header's count of cells is still no row: its text would be lost or
    misplaced without a word."""
    if [c.strip().removeprefix(BOM) for c in cells] == header:
        return "the header again (two files joined into one?): delete this line"
    named = [i for i, name in enumerate(header) if name]
    # (an unnamed first column is pandas' index: numbers, nothing to lose)
    lost = [i for i in range(named[0] + 1 if named else 0, len(cells)) if not header[i] and cells[i].strip()]
    if lost:
        return (
            f"cell {lost[0] + 1} holds text under a column the header does not name, and would be lost "
            f"(a {mark} in a value needs the value in double quotes)"
        )
    return None


def _iter_tsv(path: Path) -> Iterator[tuple[int, Any]]:
    return _iter_csv(path, "\t")


def _iter_csv(path: Path, sep: str = ",") -> Iterator[tuple[int, Any]]:
    """Rows of a CSV file, or of a TSV one (`sep` a tab: quoted as CSV is, as Excel and pandas
    write it)."""
    kind, mark = ("CSV", "comma") if sep == "," else ("TSV", "tab")
    others = [c for c in ",;\t|" if c != sep]  # the separators a file written otherwise uses
    text = _utf8(path, path.read_bytes()).removeprefix(BOM)
    spaced = sep == "," and _comma_space(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True, skipinitialspace=spaced)
    header: list[str] = []
    start = 1  # the line the record being read starts on: an unclosed quote fails at the file's end
    try:
        for cells in reader:
            start = reader.line_num + 1  # where the next record starts
            if not header:
                if not any(c.strip() for c in cells):
                    continue  # blank lines before the header
                header = [c.strip() for c in cells]
                if len(header) == 1 and (used := next((c for c in others if c in header[0]), None)):
                    raise DataError(
                        f"{path}:{reader.line_num}: the header is one column, {header[0][:60]!r}: a {kind} "
                        f"dataset is {mark}-separated, and this file seems to use {used!r}; save it with "
                        f"{mark}s" + (", or name it .csv" if used == "," else "")
                    )
                repeated = sorted({c for c in header if c and header.count(c) > 1})
                if repeated:
                    names = ", ".join(repr(c) for c in repeated)
                    raise DataError(
                        f"{path}:{reader.line_num}: the header names column {names} more than once"
                    )
                continue
            if not any(c.strip() for c in cells):
                continue  # a blank line between records, or a spreadsheet's row of empty cells (",,")
            while len(cells) > len(header) and not cells[-1].strip():
                cells.pop()  # trailing empty cells (a spreadsheet's "a,b,,"): nothing is lost
            if len(cells) != len(header):
                # a record may span lines; line_num is the line where it ends, which is where it is visible
                what = "more" if len(cells) > len(header) else "fewer"
                spaced = any(c != c.lstrip() and c.lstrip().startswith('"') for c in cells)
                hint = (
                    f"a quote opens a quoted value only right after the {mark}: remove the space before it"
                    if spaced
                    else f"a {mark} in a value needs the value in double quotes"
                )
                yield (
                    reader.line_num,
                    BadRow(
                        "",
                        f"{len(cells)} cell{'s' * (len(cells) != 1)}, {what} than the header's {len(header)} columns "
                        f"({hint})",
                    ),
                )
                continue
            if problem := _row_problem(header, cells, mark):
                yield reader.line_num, BadRow("", problem)
                continue
            yield reader.line_num, {name: cell for name, cell in zip(header, cells) if name}
    except csv.Error as exc:
        used = next((c for c in others if f'"{c}"' in _first_line(text)), None) if not header else None
        hint = (  # '"prompt";"completion"': quoted cells joined by another separator
            f"this file seems to use {used!r}: save it with {mark}s"
            if used
            else f"a quoted value must close its quote, and only a {mark} may follow it"
        )
        raise DataError(f"{path}:{start}: unreadable {kind} ({exc}; {hint})") from None
    if not header:
        raise DataError(f"{path}:1: empty {kind} file (expected a header row)")


MAX_PARQUET_ROWS = 10_000_000
MAX_PARQUET_BYTES = 4_000_000_000


def _iter_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        meta = parquet.metadata
        size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    # a few hundred KB of dictionary-encoded columns can unpack to 100 million rows: said from the
    # footer, before anything is read (a fine-tuning set holds thousands to tens of thousands)
    if meta.num_rows > MAX_PARQUET_ROWS or size > MAX_PARQUET_BYTES:
        raise DataError(
            f"{path}: {meta.num_rows:,} rows, {size / 1e9:.1f} GB unpacked; edgetune reads at most "
            f"{MAX_PARQUET_ROWS:,} rows and {MAX_PARQUET_BYTES / 1e9:.0f} GB from a Parquet file"
        )
    number = 0  # Parquet has no lines: "line" is the 1-based row number
    batches = parquet.iter_batches(batch_size=4096)
    try:
        while True:
            try:
                batch = next(batches, None)
            except Exception as exc:
                raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
            if batch is None:
                return
            for row in batch.to_pylist():
                number += 1
                yield number, row
    finally:
        parquet.close()
