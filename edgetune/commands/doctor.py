from __future__ import annotations

import click
from rich.markup import escape


@click.command()
def doctor() -> None:
    """Report the environment: Python, torch and CUDA, bitsandbytes, onnxruntime, llama.cpp, disk."""
    from edgetune.console import out
    from edgetune.doctor import run_checks

    for c in run_checks():
        mark = "[green]ok[/] " if c.ok else "[yellow]-- [/]"
        out.print(f"{mark} [bold]{c.name:<28}[/] {escape(c.detail)}", soft_wrap=True)
        if c.fix:
            out.print(f"{'':<32}fix: {escape(c.fix)}", soft_wrap=True)
