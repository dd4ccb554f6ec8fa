from __future__ import annotations

import click
from rich.markup import escape


@click.command()
def doctor() -> None:
    """Report the environment: Python, torch and CUDA, bitsandbytes, onnxruntime, llama.cpp, disk.

    Exits 2 when something a command needs is missing (a package, a version edgetune does not
    support, the built-in model, a usable cache), so `edgetune doctor && make` stops early; what only
    limits a feature (no CUDA, no bitsandbytes, little disk) is reported and exits 0."""
    from edgetune.console import err, out
    from edgetune.doctor import run_checks

    checks = run_checks()
    for c in checks:
        mark = "[green]ok[/] " if c.ok else "[red]xx[/] " if c.problem else "[yellow]-- [/]"
        out.print(f"{mark} [bold]{c.name:<28}[/] {escape(c.detail)}", soft_wrap=True)
        if c.fix:
            out.print(f"{'':<32}fix: {escape(c.fix)}", soft_wrap=True)
    problems = [c.name for c in checks if c.problem]
    if problems:
        err.print(
            f"[red]doctor:[/] {escape(', '.join(problems))}: edgetune needs "
            f"{'this' if len(problems) == 1 else 'these'} (see fix above)",
            soft_wrap=True,
        )
        raise SystemExit(2)
