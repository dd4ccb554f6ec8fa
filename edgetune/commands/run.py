from __future__ import annotations

import click

from edgetune.commands.common import not_built, set_option


@click.command()
@click.argument("recipe", required=False)
@set_option
def run(recipe, overrides) -> None:
    """Tune, merge, export and bench RECIPE; stages that are up to date are skipped."""
    from edgetune.config import load_recipe

    load_recipe(recipe, list(overrides))
    not_built("run", 7)
