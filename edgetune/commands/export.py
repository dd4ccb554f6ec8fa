from __future__ import annotations

from pathlib import Path

import click

from edgetune.commands.common import not_built


@click.command()
@click.argument("source", required=False, type=click.Path(path_type=Path))
@click.option(
    "--to", "formats", default=None, help="Comma-separated formats: gguf,onnx (default: the recipe's)."
)
@click.option("--quant", "quants", default=None, help="Comma-separated quant types, e.g. q8_0,q4_k_m,int4.")
@click.option("--out", type=click.Path(path_type=Path), help="Output directory (default: RUN_DIR/export).")
@click.option(
    "--imatrix", type=click.Choice(["on", "off"]), default="on", help="Importance matrix for GGUF quants."
)
@click.option("--check", is_flag=True, help="Only run the parity check on existing exports.")
def export(source, formats, quants, out, imatrix, check) -> None:
    """Export a run (default: runs/latest) or a plain HF model directory to GGUF and ONNX."""
    not_built("export", 4)
