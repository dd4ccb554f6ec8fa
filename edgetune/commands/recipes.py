from __future__ import annotations

import click


@click.command()
def recipes() -> None:
    """List the bundled recipes, one line each (run one with `edgetune tune NAME`)."""
    import yaml

    from edgetune.config import bundled_recipes

    for name, path in bundled_recipes().items():
        try:
            description = (yaml.safe_load(path.read_text()) or {}).get("description", "")
        except yaml.YAMLError:
            description = "(unreadable)"
        click.echo(f"{name:<28} {description}")
