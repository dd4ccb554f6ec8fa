from __future__ import annotations

from pathlib import Path

import click

from edgetune.commands.common import not_built


@click.command()
@click.argument("run_dir", required=False, type=click.Path(path_type=Path))
def merge(run_dir) -> None:
    """Merge RUN_DIR's adapter into its base model, writing RUN_DIR/merged (default: runs/latest)."""
    not_built("merge", 4)
