"""Shared terminal output: one rich console on stderr for progress, stdout for results.

Output to a file or a pipe (a Makefile's log, CI) is not cut to rich's 80-column default:
they get LOG_WIDTH unless COLUMNS says otherwise. A table wider than its console, as on a narrow
terminal, is printed as one block per row instead, so every value stays whole.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Sequence

from rich.console import Console

from edgetune.errors import printable

LOG_WIDTH = 160


def _log_width(stream) -> int | None:
    """LOG_WIDTH for a stream that is not a terminal, unless COLUMNS is set; None: rich decides.
    A COLUMNS that is no width (0, empty, "abc") is not set: rich took 0 as a width, and printed
    nothing at all, not a warning nor a summary."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isascii() and columns.isdigit() and int(columns) > 0:
        return None  # rich reads it
    if not stream.isatty():
        return LOG_WIDTH
    if "COLUMNS" not in os.environ:
        return None
    try:  # what rich would find without COLUMNS
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError):
        return 80


class _Console(Console):
    def print(self, *objects, **kwargs) -> None:
        """Text with its control characters shown, not sent (errors.printable)."""
        super().print(*(printable(o) if isinstance(o, str) else o for o in objects), **kwargs)

    def on_broken_pipe(self) -> None:
        """The reader of the output left (`| head`): the CLI ends as SIGPIPE ends a Unix tool
        (status 141), not with rich's exit 1, which edgetune's contract reads as an internal failure."""
        self.quiet = True
        raise BrokenPipeError


def live(console: Console) -> bool:
    """Whether a live progress bar may be drawn: on a real terminal that can redraw. FORCE_COLOR
    (any value) or TTY_COMPATIBLE=1 make rich take a pipe for a terminal, for colour, and a bar
    redrawn ten times a second filled CI logs (a tune: 1,176 redraws in 131 s); TERM=dumb or
    TTY_INTERACTIVE=0 cannot redraw, and showed nothing until the end."""
    try:
        tty = console.file.isatty()
    except (AttributeError, ValueError):  # no file, or a closed one
        tty = False
    return tty and console.is_interactive


class StageProgress:
    """One rich progress bar per stage of long work on stderr (bench's targets, the importance
    matrix); silent without a console. Where stderr is not a
    terminal (a log), a plain line every LOG_EVERY_S seconds and at the stage's end: rich's live
    bar draws nothing there until it stops."""

    LOG_EVERY_S = 30.0

    def __init__(self, console):
        self.console = console

    @contextlib.contextmanager
    def stage(self, label: str, total: int):
        if self.console is None:
            yield lambda: None
            return
        if not live(self.console):
            started, done, printed = time.time(), [0], [time.time()]

            def tick() -> None:
                done[0] += 1
                if time.time() - printed[0] >= self.LOG_EVERY_S or done[0] == total:
                    self.console.print(
                        f"{label} {done[0]}/{total} {time.time() - started:.0f} s", highlight=False
                    )
                    printed[0] = time.time()

            yield tick
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        ) as progress:
            task = progress.add_task(label, total=total)
            yield lambda: progress.advance(task)


out = _Console(highlight=False, emoji=False, width=_log_width(sys.stdout))  # "d.jsonl:100:" is no 💯
# progress and warnings; `edgetune run` prints its stages here
err = _Console(stderr=True, highlight=False, emoji=False, width=_log_width(sys.stderr))


def _plain_len(markup: str) -> int:
    from rich.text import Text

    return Text.from_markup(markup, emoji=False).cell_len


def _packed(items: Iterable[str], width: int, indent: str = "  ", gap: str = "   ") -> list[str]:
    """Items joined into lines no wider than `width` where they fit; an item is never split."""
    lines: list[str] = []
    line, used = "", 0
    for item in items:
        size = _plain_len(item)
        if line and used + len(gap) + size > width:
            lines.append(line)
            line, used = "", 0
        line, used = (
            (line + gap + item, used + len(gap) + size) if line else (indent + item, len(indent) + size)
        )
    if line:
        lines.append(line)
    return lines


def print_rows(
    console: Console,
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    left: Iterable[str] = (),
) -> None:
    """Rows (cells may hold rich markup) as a table when it fits `console`; otherwise as blocks: the
    first cell in bold, then `header value` pairs packed into lines (a cell under an empty header
    alone)."""
    from rich.measure import Measurement
    from rich.table import Table

    left = set(left) | {headers[0]}
    table = Table(title=title)
    for header in headers:
        table.add_column(header, justify="left" if header in left else "right")
    rows = [[printable(cell) for cell in row] for row in rows]  # a data row's text may hold escapes
    for row in rows:
        table.add_row(*row)
    if Measurement.get(console, console.options.update_width(10_000), table).maximum <= console.width:
        console.print(table)
        return
    console.print(f"[bold]{title}[/]")
    for row in rows:
        console.print(f"[bold]{row[0]}[/]", soft_wrap=True)
        items = [f"{h} {c}" if h else c for h, c in zip(headers[1:], row[1:]) if c != ""]
        for line in _packed(items, console.width):
            console.print(line, soft_wrap=True)
