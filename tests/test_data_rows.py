import csv
import json

import pytest
from click.testing import CliRunner
from conftest import chat_row, write_jsonl

from edgetune.cli import main
from edgetune.data.rows import load_examples
from edgetune.errors import DataError


def test_detects_each_row_format(tmp_path):
    cases = {
        "messages": chat_row("hi", "hello"),
        "prompt_completion": {"prompt": "2+2=", "completion": "4"},
        "text": {"text": "plain text"},
    }
    for fmt, row in cases.items():
        result = load_examples(write_jsonl(tmp_path / f"{fmt}.jsonl", [row, row]))
        assert result.format == fmt
        assert len(result.examples) == 2
        assert result.examples[1].source.endswith(f"{fmt}.jsonl:2")


@pytest.mark.parametrize(
    "bad, field",
    [
        ('{"messages": [{"role": "user", "content": "hi"}, ', "invalid JSON"),
        (
            {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]},
            "messages[0].content: expected a string",
        ),
        (
            {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]},
            "messages[0].content: is empty",
        ),
        (
            {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]},
            "messages[0].role: unknown role 'robot'",
        ),
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages: has no assistant turn"),
        ({"messages": "nope"}, "messages: invalid JSON"),
        ({"prompt": "only a prompt"}, "messages: missing"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_bad_row_names_file_line_and_field(tmp_path, bad, field):
    rows = [chat_row(f"q{i}", f"a{i}") for i in range(6)] + [bad] + [chat_row("q", "a")]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_examples(path)
    assert f"{path}:7: " in str(info.value)
    assert field in str(info.value)


def test_skip_bad_rows_counts_them(tmp_path):
    rows = [chat_row("a", "b"), "{oops", {"messages": []}, chat_row("c", "d")]
    result = load_examples(write_jsonl(tmp_path / "d.jsonl", rows), skip_bad_rows=True)
    assert len(result.examples) == 2
    assert len(result.skipped) == 2
    assert result.skipped[0].endswith(
        "d.jsonl:2: invalid JSON (Expecting property name enclosed in double quotes at column 2)"
    )


def test_forced_format_mismatch_is_reported(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}])
    with pytest.raises(DataError, match="d.jsonl:1: prompt: missing"):
        load_examples(path, "prompt_completion")


def test_csv_and_parquet_read_like_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [chat_row(f"user {i}, with a comma", f'{{"a": {i}}}', system="sys") for i in range(5)]
    expected = load_examples(write_jsonl(tmp_path / "d.jsonl", rows)).examples
    with open(tmp_path / "d.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["messages"])
        for r in rows:
            w.writerow([json.dumps(r["messages"])])
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name in ("d.csv", "d.parquet"):
        got = load_examples(tmp_path / name).examples
        assert got == expected, name

    pc = tmp_path / "pc.csv"
    pc.write_text('prompt,completion\n"Translate: hi","bonjour"\n,"empty prompt"\n')
    with pytest.raises(DataError, match=r"pc.csv:3: prompt: is empty"):
        load_examples(pc)


def test_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="unknown dataset file type '.txt'"):
        load_examples(tmp_path / "d.txt")
    with pytest.raises(DataError, match="file not found"):
        load_examples(tmp_path / "missing.jsonl")


def test_a_directory_or_pipe_is_not_a_dataset(tmp_path):
    import os

    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(DataError, match=r"dir.jsonl: not a regular file"):
        load_examples(tmp_path / "dir.jsonl")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.jsonl")
        with pytest.raises(DataError, match=r"pipe.jsonl: not a regular file"):
            load_examples(tmp_path / "pipe.jsonl")


def test_cli_names_line_7_and_exits_2(tmp_path):
    rows = [chat_row(f"q{i}", f"a{i}") for i in range(6)] + ['{"messages": [}'] + [chat_row("q", "a")]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    result = CliRunner().invoke(main, ["data", "check", str(path), "--no-tokens"])
    assert result.exit_code == 2
    assert f"{path}:7: invalid JSON" in result.output
    assert "Traceback" not in result.output


def test_cli_skip_bad_rows_reports_count(tmp_path):
    rows = [chat_row(f"q{i}", f"a{i}") for i in range(20)] + ["not json"]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    result = CliRunner().invoke(
        main, ["data", "check", str(path), "--no-tokens", "--skip-bad-rows", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["skipped_bad_rows"] == 1
    assert report["counts"] == {"train": 16, "valid": 2, "test": 2}
