from __future__ import annotations

import json
from pathlib import Path

import click

from edgetune.commands.common import NamingGroup, set_option
from edgetune.data.rows import FORMATS


@click.group(cls=NamingGroup)
def data() -> None:
    """Validate and describe datasets."""


@data.command("check")
@click.argument("data_file", type=click.Path(path_type=Path))
@click.option(
    "--recipe", "recipe_name", default=None, help="Recipe for model and data settings (default: demo)."
)
@set_option
@click.option("--valid", type=click.Path(path_type=Path), help="Separate validation file.")
@click.option("--test", type=click.Path(path_type=Path), help="Separate test file.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", *FORMATS]),
    default=None,
    help="Row layout (default: detected from the first row).",
)
@click.option(
    "--skip-bad-rows", is_flag=True, help="Skip invalid rows and report how many, instead of failing."
)
@click.option(
    "--no-tokens", is_flag=True, help="Skip tokenisation (no model needed): rows, splits and overlap only."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check(data_file, recipe_name, overrides, valid, test, fmt, skip_bad_rows, no_tokens, as_json) -> None:
    """Validate DATA_FILE (JSONL, a .json array, CSV or Parquet) and describe it: format, counts, splits, lengths.

    Exit code 2 names the file, line and field of the first bad row.
    """
    from edgetune.console import err
    from edgetune.data.report import check_dataset, print_report

    files = {"train": data_file, "valid": valid, "test": test}
    report = check_dataset(
        recipe_name,
        list(overrides),
        files,
        fmt=fmt,
        skip_bad_rows=skip_bad_rows or None,  # without the flag, the recipe's data.skip_bad_rows
        tokens=not no_tokens,
        say=lambda message: err.print(f"[dim]{message}[/]"),  # on stderr: --json's stdout stays JSON
    )
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        print_report(report)
