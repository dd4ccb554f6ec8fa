"""Printed tables keep every value whole: a table where it fits, one block per row where it does not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from edgetune import console as console_mod
from edgetune.console import print_rows

HEADERS = ["target", "size", "retention", "interval", "gate"]
ROWS = [
    ["gguf/q4_k_m", "105 MB", "95.9%", "91.8%-100.3%", "[green]pass[/]"],
    ["onnx/int4", "156 MB", "92.1%", "88.4%-95.8%", "[red]FAIL: retention 92.1% < 95%[/]"],
]


def _render(width: int, headers=HEADERS, rows=ROWS) -> str:
    console = Console(record=True, width=width, force_terminal=False)
    print_rows(console, "bench", headers, rows, left=("gate",))
    return console.export_text()


def test_a_table_that_fits_is_a_table():
    text = _render(120)
    assert "┃ target" in text and "retention" in text
    assert "91.8%-100.3%" in text and "FAIL: retention 92.1% < 95%" in text
    assert "…" not in text


def test_a_table_wider_than_the_console_becomes_blocks_with_every_value_whole():
    text = _render(40)
    lines = text.splitlines()
    assert "┃" not in text and "…" not in text
    assert lines[0] == "bench"
    assert "gguf/q4_k_m" in lines and "onnx/int4" in lines
    for header, value in zip(HEADERS[1:], ROWS[0][1:4]):
        assert f"{header} {value}" in text
    assert "gate FAIL: retention 92.1% < 95%" in text
    # items are packed into lines no wider than the console and never split
    assert all(len(line) <= 40 for line in lines)
    assert "  size 105 MB   retention 95.9%" in lines


def test_a_cell_under_an_empty_header_is_shown_without_a_label():
    text = _render(20, headers=["artifact", "KL", ""], rows=[["model.gguf", "1.2e-03", "ok"]])
    assert text.splitlines() == ["bench", "model.gguf", "  KL 1.2e-03   ok"]


def test_the_demo_bench_report_on_an_80_column_console_shows_every_interval():
    from edgetune.bench.report import print_table

    path = Path(__file__).parents[1] / "bench/baselines/demo-cpu-epyc/report.json"
    report = json.loads(path.read_text())
    console = Console(record=True, width=80, force_terminal=False)
    print_table(report, console)
    text = console.export_text()
    assert "…" not in text
    for target in report["targets"]:
        low, high = target["retention_interval"]
        assert f"interval {low:.1%}-{high:.1%}" in text
        assert target["name"] in text.splitlines()


@pytest.mark.parametrize(
    ("columns", "tty", "width"),
    [
        (None, False, console_mod.LOG_WIDTH),
        ("70", False, None),
        (None, True, None),
        *((no_width, False, console_mod.LOG_WIDTH) for no_width in ("0", "", "abc", "-5", "\u00b2")),
    ],
)
def test_output_to_a_pipe_is_not_cut_to_80_columns(monkeypatch, columns, tty, width):
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)

    class Stream:
        def isatty(self):
            return tty

    assert console_mod._log_width(Stream()) == width


def test_columns_0_is_no_width(tmp_path):
    """COLUMNS=0 made rich print nothing at all (exit 0, no warning, no summary, no table)."""
    import os
    import subprocess
    import sys

    data = tmp_path / "d.jsonl"
    row = '{"messages": [{"role": "user", "content": "hi %d"}, {"role": "assistant", "content": "yo"}]}'
    data.write_text("".join(row % i + "\n" for i in range(30)))
    result = subprocess.run(
        [sys.executable, "-m", "edgetune", "data", "check", str(data), "--no-tokens"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "0"},
        timeout=120,
    )
    assert result.returncode == 0 and "bad rows skipped: 0" in result.stdout, (result.stdout, result.stderr)


def test_a_file_and_line_number_are_printed_as_written(capsys):
    """rich reads ":100:" as the emoji code for 💯 ("d.jsonl:100: completion: missing" lost its line)."""
    from rich.markup import escape

    for stream in (console_mod.out, console_mod.err):
        stream.print(f"bad rows skipped: 1 (first: {escape('d.jsonl:100: completion: missing')})")
        stream.print(escape("d.jsonl:1234: too long"))
    out, err = capsys.readouterr()
    for text in (out, err):
        assert "d.jsonl:100: completion: missing" in text and "d.jsonl:1234: too long" in text, text


def test_live_progress_is_drawn_only_on_a_terminal_that_can_redraw(monkeypatch):
    """FORCE_COLOR (any value) or TTY_COMPATIBLE=1 made rich take a CI pipe for a terminal: tune
    redrew its bar 1,176 times in 131 s into the log; under TERM=dumb nothing showed until the end."""
    import io
    import os

    from rich.console import Console

    from edgetune.console import live

    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("FORCE_COLOR", "1")
    piped = Console(file=io.StringIO())
    assert piped.is_terminal and not live(piped)  # colour, yes; a live bar, no
    monkeypatch.delenv("FORCE_COLOR")
    leader, follower = os.openpty()
    with open(follower, "w") as tty:
        assert live(Console(file=tty))
        monkeypatch.setenv("TERM", "dumb")
        assert not live(Console(file=tty))
    os.close(leader)
    closed = io.StringIO()
    closed.close()
    assert not live(Console(file=closed))
