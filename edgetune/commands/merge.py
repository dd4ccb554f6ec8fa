from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from edgetune.commands.common import one_process


@click.command()
@click.argument("run_dir", required=False, type=click.Path(path_type=Path))
def merge(run_dir) -> None:
    """Merge RUN_DIR's adapter into its base model, writing RUN_DIR/merged (default: runs/latest)."""
    one_process("merge")
    from edgetune.console import err, out
    from edgetune.merge import merge as run_merge

    r = run_merge(run_dir, console=err)
    for name, c in r.candidates.items():
        mark = "*" if name == r.chosen else " "
        out.print(
            f"{mark} {name:<16} validation loss {c['valid_loss']:.4f}   KL to adapter {c['kl_to_adapter']:.2e}"
        )
    out.print(f"merged model: {escape(str(r.merged_dir))} ({r.wall_s:.0f} s)")
