from __future__ import annotations

import click


@click.command()
def recipes() -> None:
    """List the bundled recipes, one line each (run one with `edgetune tune NAME`), and where
    their files are (on stderr, so that the list stays one line per recipe)."""
    import yaml

    from edgetune.config import RECIPES_DIR, bundled_recipes
    from edgetune.console import err

    for name, path in bundled_recipes().items():
        try:
            description = (yaml.safe_load(path.read_text()) or {}).get("description", "")
        except yaml.YAMLError:
            description = "(unreadable)"
        click.echo(f"{name:<28} {description}")
    err.print(
        f"the files are in {RECIPES_DIR}: copy one to start your own (its relative data paths are "
        "read from the copy's folder)",
        markup=False,
        soft_wrap=True,
    )
