"""Dataset files as people really have them: a JSON array, a BOM, stray bytes, spreadsheet CSV.

Each problem is one DataError naming the file and the line an editor shows, or a bad row at that
line; nothing reaches the tokenizer that it would fail on later."""

import json

import pytest
from click.testing import CliRunner
from conftest import chat_row

from edgetune.cli import main
from edgetune.data.rows import load_examples
from edgetune.errors import DataError

ROWS = [chat_row(f"question {i}", f"answer {i}") for i in range(4)]


def jsonl_bytes(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_a_stray_byte_far_into_a_jsonl_file_names_its_own_line(tmp_path):
    """Decoding line by line: a chunked decoder reports the line its chunk began on."""
    path = tmp_path / "d.jsonl"
    body = jsonl_bytes([chat_row(f"q{i} " + "x" * 200, "a") for i in range(1500)])
    path.write_bytes(body + b'{"text": "caf\xe9"}\n' + jsonl_bytes(ROWS))
    with pytest.raises(DataError, match=rf"{path}:1501: not valid UTF-8 text \(byte 0xe9\)"):
        load_examples(path)


def test_a_file_saved_as_windows_1252_says_what_its_byte_reads_as_there(tmp_path):
    """Excel's "CSV" on Windows saves Windows-1252: "byte 0xe9" alone did not say it was an é."""
    path = tmp_path / "d.csv"
    path.write_bytes("prompt,completion\nCafé au lait?,“Oui”\n".encode("cp1252"))
    with pytest.raises(DataError) as info:
        load_examples(path)
    assert str(info.value) == (
        f"{path}:2: not valid UTF-8 text (byte 0xe9): text saved in another encoding (in Windows-1252, "
        "Excel's CSV on Windows, it reads 'é'); save it as UTF-8"
    )
    path.write_bytes(b"prompt,completion\nq,\x81\n")  # no character in Windows-1252 either: no guess
    with pytest.raises(DataError, match=r":2: not valid UTF-8 text \(byte 0x81\)$"):
        load_examples(path)


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "json"])
def test_a_utf16_file_is_named_as_one(tmp_path, suffix):
    """Windows tools save UTF-16: "not valid UTF-8 (byte 0xff)" did not say what the file was."""
    path = tmp_path / f"d.{suffix}"
    text = "prompt,completion\n2+2=,4\n" if suffix == "csv" else jsonl_bytes(ROWS).decode()
    path.write_bytes(text.encode("utf-16"))
    with pytest.raises(DataError, match=rf"{path}:1: not valid UTF-8 text \(byte 0xff\): a UTF-16 file"):
        load_examples(path)


def test_jsonl_lines_may_end_in_a_lone_cr_as_old_mac_files_do(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps(r) for r in ROWS]
    path.write_bytes("\r".join(lines).encode() + b"\r")
    assert [e.source for e in load_examples(path).examples] == [f"{path}:{n}" for n in range(1, 5)]
    path.write_bytes("\r".join(lines[:2] + ['{"text": 3}'] + lines[2:]).encode())
    with pytest.raises(DataError, match=rf"{path}:3: messages: missing"):
        load_examples(path)
    path.write_bytes("\r\n".join(lines).encode())  # CRLF stays one line end
    assert [e.source for e in load_examples(path).examples] == [f"{path}:{n}" for n in range(1, 5)]


def test_a_bom_is_read_past_in_jsonl_json_and_csv(tmp_path):
    (tmp_path / "d.jsonl").write_bytes(b"\xef\xbb\xbf" + jsonl_bytes(ROWS))
    (tmp_path / "d.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(ROWS).encode())
    (tmp_path / "d.csv").write_bytes(b"\xef\xbb\xbfprompt,completion\r\n2+2=,4\r\n3+3=,6\r\n")
    for name in ("d.jsonl", "d.json"):
        assert len(load_examples(tmp_path / name).examples) == 4
    assert [e.completion for e in load_examples(tmp_path / "d.csv").examples] == ["4", "6"]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"text": "half a pair \\ud83d here"}', "half a UTF-16 surrogate pair"),
        ('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ],
)
def test_json_python_reads_but_no_tokenizer_can_is_a_bad_row(tmp_path, line, message):
    path = tmp_path / "d.jsonl"
    path.write_bytes(jsonl_bytes(ROWS[:2]) + line.encode() + b"\n" + jsonl_bytes(ROWS[2:]))
    with pytest.raises(DataError, match=rf"{path}:3: .*{message}"):
        load_examples(path)
    assert len(load_examples(path, skip_bad_rows=True).examples) == 4
    paired = tmp_path / "pair.jsonl"  # a whole pair is an emoji, and fine
    paired.write_text('{"text": "an emoji \\ud83d\\ude00"}\n')
    assert load_examples(paired).examples[0].text == "an emoji \U0001f600"


def test_a_json_array_file_reads_like_jsonl_and_names_the_line_each_row_starts_on(tmp_path):
    alpaca = [{"instruction": f"say {i}", "input": "", "output": f"{i}"} for i in range(3)]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(alpaca, indent=2))
    result = load_examples(path)
    assert result.format == "alpaca" and len(result.examples) == 3
    starts = [n + 1 for n, text in enumerate(path.read_text().splitlines()) if text.strip() == "{"]
    assert [e.source for e in result.examples] == [f"{path}:{n}" for n in starts]
    alpaca[1]["output"] = 7
    path.write_text(json.dumps(alpaca, indent=2))
    with pytest.raises(DataError, match=rf"{path}:{starts[1]}: output: expected a string"):
        load_examples(path)
    lines = json.dumps(ROWS, indent=1).splitlines()
    lines[5] = lines[5] + " oops"
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=rf"{path}:6: invalid JSON in the array"):
        load_examples(path)
    whole = json.dumps(ROWS)
    for text, message in ((whole[:-1], "expected , or \\] between rows"), (whole + " []", "text after the")):
        path.write_text(text)
        with pytest.raises(DataError, match=message):
            load_examples(path)
    path.write_text("[]")
    with pytest.raises(DataError, match="no usable examples"):
        load_examples(path)
    path.write_bytes(jsonl_bytes(ROWS))  # one row per line, named .json
    assert len(load_examples(path).examples) == 4
    path.write_text(json.dumps({"version": 2, "data": ROWS}, indent=2))  # a hub export's wrapper object
    with pytest.raises(DataError, match=r"one JSON object, not rows.*its rows may be the 'data' list"):
        load_examples(path)


def test_a_json_array_in_a_jsonl_file_and_a_control_character_are_said_plainly(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl:1: a JSON array, where JSONL has one object per line"):
        load_examples(path)
    path.write_text(json.dumps(ROWS[0]["messages"]) + "\n")  # one chat's turns per line
    with pytest.raises(
        DataError, match=r"d.jsonl:1: a JSON array.*a line of messages is written \{\"messages\""
    ):
        load_examples(path)
    path.write_text('{"text": "a\x01b"}\n')
    with pytest.raises(
        DataError, match=r"d.jsonl:1: invalid JSON \(Invalid control character at column 12\)"
    ):
        load_examples(path)
    # the same in a CSV cell's JSON (the message had ended "(Invalid control character at)")
    csv = tmp_path / "d.csv"
    csv.write_text('messages\n"[{""role"": ""user"", ""content"": ""a\tb""}]"\n')
    with pytest.raises(DataError, match=r"invalid JSON \(Invalid control character at character 32\)"):
        load_examples(csv)


def test_spreadsheet_csv_blank_lines_long_cells_and_trailing_empty_columns_read(tmp_path):
    path = tmp_path / "d.csv"
    long = "word " * 60_000  # 300 KB in one cell: over csv's default 128 KB limit
    path.write_text(
        f'\n\ntext,,\nshort one,,\n\n"{long}",,\n,,\n , \n', newline=""
    )  # and rows of blank cells
    texts = [e.text for e in load_examples(path).examples]
    assert texts == ["short one", long]


@pytest.mark.parametrize(
    "content, where, message",
    [
        (b"prompt,completion\n2+2=,4\n3+3=,6,extra\n", ":3: 3 cells, more than the header's 2", "row"),
        (
            b'prompt,completion\n2+2=,4\n3+3=, "6, six"\n',
            ":3: 3 cells, more than the header's 2 columns (a quote opens",
            "row",
        ),
        (b"prompt,completion\n2+2=,4\n3+3=\n", ":3: 1 cell, fewer than the header's 2", "row"),
        (  # Excel's unnamed last column took the text after the comma
            b"prompt,completion,\n2+2=,4,\n3+3=,It is 6, obviously\n",
            ":3: cell 3 holds text under a column the header does not name, and would be lost",
            "row",
        ),
        (
            b"prompt,completion\n2+2=,4\nprompt,completion\n",
            ":3: the header again (two files joined",
            "row",
        ),
        (
            b'"prompt";"completion"\n"2+2=";"4"\n',
            ":1: unreadable CSV (',' expected after '\"'; this file seems to use ';'",
            "",
        ),
        (b"prompt,prompt,completion\na,b,c\n", ":1: the header names column 'prompt' more than once", ""),
        (b"prompt;completion\n2+2=;4\n", ":1: the header is one column, 'prompt;completion': a CSV", ""),
        (b'prompt,completion\n2+2=,4\n"3+3=,6\n4+4=,8\n', ":3: unreadable CSV", ""),  # the quote opens there
        (b'prompt,completion\n2+2=,4\n"3+3=,6\n' + b"4+4=,8\n" * 50, ":3: unreadable CSV", ""),
        (b"prompt,completion\n2+2=,4\n3+3=,\xff\n", ":3: not valid UTF-8 text (byte 0xff)", ""),
        (  # a messages cell is JSON: nested past Python's recursion limit, it is one bad row
            b'messages\n"' + b"[" * 5000 + b"]" * 5000 + b'"\n',
            ":2: messages: JSON nested too deeply to be a dataset field",
            "",
        ),
    ],
)
def test_csv_problems_name_their_line(tmp_path, content, where, message):
    path = tmp_path / "d.csv"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_examples(path)
    assert f"{path}{where}" in str(info.value)
    if message == "row":  # one bad row: skipping it helps
        assert "skip_bad_rows" in str(info.value)
        assert len(load_examples(path, skip_bad_rows=True).examples) == 1
    result = CliRunner().invoke(main, ["data", "check", str(path), "--no-tokens"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output


def test_csv_rows_that_were_read_are_read_as_they_were(tmp_path):
    """What review found refused or changed by checks meant for broken files: a trailing comma
    after a completion that opens with a space (the old OpenAI style), an indent after ", " in a
    file whose header is written so, and a comma missing inside a row of a JSON array."""
    trailing = tmp_path / "trailing.csv"
    trailing.write_text("prompt,completion\nQ: capital of France?\\nA:, Paris,\n2+2=, 4,\n")
    assert [e.completion for e in load_examples(trailing).examples] == [" Paris", " 4"]
    indented = tmp_path / "indented.csv"
    indented.write_text("prompt, completion\ndef f():,    return 1\ndef g():, pass\n")
    assert [(e.prompt, e.completion) for e in load_examples(indented).examples] == [
        ("def f():", "    return 1"),
        ("def g():", " pass"),  # read as before: csv would take every space after a comma
    ]
    inside = tmp_path / "inside.json"
    inside.write_text(
        '[\n{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},]}\n]\n'
    )
    with pytest.raises(
        DataError, match=rf"^{inside}:2: invalid JSON in the array \(Expecting value at column"
    ):
        load_examples(inside)


def test_a_csv_written_with_comma_space_reads_its_values_without_that_space(tmp_path):
    """`prompt, completion` by hand: the space after each comma is no part of the value (the
    completion " 4" taught the model to answer with a space), and a quote may open after it. A
    pandas index column is still read past."""
    path = tmp_path / "d.csv"
    path.write_text('prompt, completion\nWhat is 2+2?, 4\nSay "hi", "hi, there"\n')
    assert [(e.prompt, e.completion) for e in load_examples(path).examples] == [
        ("What is 2+2?", "4"),
        ('Say "hi"', "hi, there"),
    ]
    indexed = tmp_path / "i.csv"
    indexed.write_text(",prompt,completion\n0,2+2=, 4\n1,3+3=,6\n")  # one value's space is its own
    assert [(e.prompt, e.completion) for e in load_examples(indexed).examples] == [
        ("2+2=", " 4"),
        ("3+3=", "6"),
    ]


def test_a_tab_separated_file_reads_as_excel_and_pandas_write_it(tmp_path):
    """Excel's "Text (Tab delimited)" and pandas' to_csv(sep="\t") were "unknown dataset file
    type '.tsv'": a TSV is a CSV separated by tabs, its cells with a tab, a newline or a quote in
    double quotes, and commas in values need none."""
    import csv

    rows = [
        ("Summarise: disk full, then reboot", 'Disk full; "reboot" fixed it'),
        ("Multi-line\nlog\twith a tab", "One, two, three"),
    ]
    path = tmp_path / "d.tsv"
    with path.open("w", newline="") as f:  # as pandas and Excel quote: minimal, the quotes doubled
        csv.writer(f, delimiter="\t").writerows([("prompt", "completion"), *rows])
    assert '"Disk full; ""reboot"" fixed it"' in path.read_text()
    assert [(e.prompt, e.completion) for e in load_examples(path).examples] == rows
    tab = tmp_path / "d.tab"
    tab.write_text("prompt\tcompletion\n2+2=\t4\n3+3=\t6\tsix\n")
    with pytest.raises(DataError, match=r":3: 3 cells, more than the header's 2 columns \(a tab in a value"):
        load_examples(tab)
    commas = tmp_path / "c.tsv"
    commas.write_text("prompt,completion\n2+2=,4\n")
    with pytest.raises(
        DataError,
        match=r":1: the header is one column, 'prompt,completion': a TSV dataset is tab-separated.*or name it \.csv",
    ):
        load_examples(commas)
    unicode_text = tmp_path / "u.tsv"  # Excel's "Unicode Text" is UTF-16
    unicode_text.write_bytes("prompt\tcompletion\n2+2=\t4\n".encode("utf-16"))
    with pytest.raises(DataError, match=r":1: not valid UTF-8 text \(byte 0xff\): a UTF-16 file"):
        load_examples(unicode_text)


def test_json_quirks_get_their_own_line_and_advice(tmp_path):
    """Old Mac line ends in a .json array count as lines; one pretty-printed row is told it is one
    row, not advised to save its messages list alone; a first row that is an array says so."""
    cr = tmp_path / "cr.json"
    cr.write_bytes(b'[\r{"text": "one"},\r{"text": "two"},\r{"txt": 3}\r]\r')
    with pytest.raises(DataError, match=rf"^{cr}:4: "):
        load_examples(cr)
    crlf = tmp_path / "crlf.json"  # Windows line ends, blank lines before the array
    crlf.write_bytes(b'\r\n\r\n\r\n[\r\n{"text": "one"},\r\n{"txt": 3}\r\n]\r\n')
    with pytest.raises(DataError, match=rf"^{crlf}:6: "):
        load_examples(crlf)
    pretty = tmp_path / "pretty.json"
    pretty.write_text(
        json.dumps(
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, indent=2
        )
    )
    with pytest.raises(DataError, match="one row spread over several lines"):
        load_examples(pretty)
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(3)]
    for suffix, where in ((".jsonl", "JSONL has"), (".json", "a .json dataset is an array of rows or has")):
        jq = tmp_path / f"jq{suffix}"  # jq without -c, or json.dumps(indent=2) per row
        jq.write_text("\n".join(json.dumps(row, indent=2) for row in rows) + "\n")
        with pytest.raises(
            DataError,
            match=rf"^{jq}:1: a row spread over several lines \(pretty-printed JSON\), where {where} one row per line",
        ):
            load_examples(jq, skip_bad_rows=True)  # each line a bad row: no skipping makes it readable
    columns = tmp_path / "columns.json"  # pandas' df.to_json() default
    columns.write_text(json.dumps({"prompt": {"0": "q", "1": "q2"}, "completion": {"0": "a", "1": "a2"}}))
    with pytest.raises(
        DataError, match=rf"^{columns}:1: columns, not rows .*orient='records', lines=True\)$"
    ):
        load_examples(columns)
    twice = tmp_path / "twice.jsonl"
    twice.write_text(json.dumps(json.dumps(rows[0])) + "\n")
    with pytest.raises(
        DataError, match=rf"^{twice}:1: expected a JSON object, got a string holding one \(a row"
    ):
        load_examples(twice)
    trailing = tmp_path / "trailing.json"
    trailing.write_text('[\n{"prompt": "q", "completion": "a"},\n]\n')
    with pytest.raises(
        DataError, match=rf"^{trailing}:3: a comma after the array's last row \(JSON allows none\)$"
    ):
        load_examples(trailing)
    first = tmp_path / "first.jsonl"
    first.write_text('["a", "b"]\n{"text": "x"}\n')
    with pytest.raises(DataError, match=rf"{first}:1: expected a JSON object, got a list"):
        load_examples(first)


def test_a_parquet_file_that_unpacks_to_too_many_rows_is_refused_from_its_footer(tmp_path, monkeypatch):
    """555 KB of dictionary-encoded columns unpacked to 100 million rows: minutes and gigabytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import edgetune.data.files as files

    path = tmp_path / "many.parquet"
    pq.write_table(pa.table({"text": ["same row"] * 50}), path)
    monkeypatch.setattr(files, "MAX_PARQUET_ROWS", 20)
    with pytest.raises(
        DataError, match=r"many.parquet: 50 rows, 0.0 GB unpacked; edgetune reads at most 20 rows"
    ):
        list(files.iter_raw_rows(path))
    monkeypatch.setattr(files, "MAX_PARQUET_ROWS", 50)
    rows = list(files.iter_raw_rows(path))  # read in batches, numbered from 1
    assert [n for n, _ in rows] == list(range(1, 51)) and rows[0][1] == {"text": "same row"}


def test_a_parquet_file_that_unpacks_to_too_many_bytes_is_refused_from_its_footer(tmp_path, monkeypatch):
    """The footer's unpacked size (its row groups' total_byte_size) is held to MAX_PARQUET_BYTES too,
    whatever its number of rows, and no row is read first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import edgetune.data.files as files

    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table({"text": ["x" * 1000 + str(i) for i in range(50)]}), path)
    size = pq.ParquetFile(path).metadata.row_group(0).total_byte_size
    monkeypatch.setattr(files, "MAX_PARQUET_BYTES", size - 1)
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", lambda *a, **k: pytest.fail("rows were read"))
    with pytest.raises(DataError, match=r"wide.parquet: 50 rows, 0.0 GB unpacked; edgetune reads at most"):
        list(files.iter_raw_rows(path))
    monkeypatch.undo()
    monkeypatch.setattr(files, "MAX_PARQUET_BYTES", size)
    assert len(list(files.iter_raw_rows(path))) == 50
