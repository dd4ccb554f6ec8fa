"""Options and helpers shared by several commands."""

from __future__ import annotations

import click

from edgetune.errors import NotBuiltError

set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe value, e.g. --set train.lr=1e-4 (repeatable).",
)


def not_built(command: str, issue: int) -> None:
    raise NotBuiltError(f"`edgetune {command}` is not built yet (tracked in issue #{issue})")
