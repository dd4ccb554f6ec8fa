from __future__ import annotations

from pathlib import Path

import click

from edgetune.commands.common import not_built


@click.command()
@click.argument("run_dir", required=False, type=click.Path(path_type=Path))
@click.option("--device", "devices", default="cpu", help="Comma-separated: cpu,cuda.")
@click.option("--gate", is_flag=True, help="Exit 3 when any gate in the recipe fails.")
@click.option("--pick", is_flag=True, help="Print the path of the smallest artifact that passes every gate.")
def bench(run_dir, devices, gate, pick) -> None:
    """Accuracy retention and latency of a run's exports (default: runs/latest)."""
    not_built("bench", 6)
