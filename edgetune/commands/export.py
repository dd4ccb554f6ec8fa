from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from edgetune.commands.common import one_process


def _split(value: str | None, option: str) -> list[str] | None:
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:  # `--to ""` must not quietly mean the recipe's whole list
        raise click.UsageError(f"{option} names nothing; give comma-separated names, or leave it out")
    return names


@click.command()
@click.argument("source", required=False, type=click.Path(path_type=Path))
@click.option(
    "--to", "formats", default=None, help="Comma-separated formats: gguf,onnx (default: the recipe's)."
)
@click.option(
    "--quant",
    "quants",
    default=None,
    help="Comma-separated types: GGUF (f16,q8_0,q4_k_m,...) and/or ONNX (fp32,fp16,int8,int4); "
    "a format not named keeps the recipe's list.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Output directory (default: RUN_DIR/export; runs/export/NAME for a model directory).",
)
@click.option(
    "--imatrix",
    type=click.Choice(["on", "off"]),
    default=None,
    help="Importance matrix from the training data for GGUF quants (default: the recipe's export.gguf.imatrix, on).",
)
@click.option(
    "--check", "check_only", is_flag=True, help="Only run the parity check on the existing exports."
)
def export(source, formats, quants, out, imatrix, check_only) -> None:
    """Export a run (default: runs/latest; merged first if needed) or an HF model directory to GGUF
    and ONNX, then check every file against the merged torch model (exit 3 when a file misses its goal)."""
    one_process("export")
    from edgetune.console import err
    from edgetune.console import out as stdout
    from edgetune.errors import Interrupted
    from edgetune.export.parity import print_table, raise_on_failure
    from edgetune.export.run import export as run_export

    try:
        results = run_export(
            source,
            _split(formats, "--to"),
            _split(quants, "--quant"),
            out,
            None if imatrix is None else imatrix == "on",
            check_only=check_only,
            console=err,
        )
    except KeyboardInterrupt:
        raise Interrupted(
            "interrupted; the files already written are whole (each is written atomically) but not all "
            "were checked: run the same export again"
        ) from None
    if "gguf" in results:
        for a in results["gguf"].artifacts:
            stdout.print(
                f"gguf {a.quant:<7} {a.size_bytes / 1e6:8.1f} MB  {escape(str(a.path))}", soft_wrap=True
            )
    if "onnx" in results:
        for a in results["onnx"].artifacts:
            stdout.print(
                f"onnx {a.quant:<7} {a.size_bytes / 1e6:8.1f} MB  {escape(str(a.path))}/", soft_wrap=True
            )
    print_table(results["parity"], stdout)
    raise_on_failure(results["parity"])
