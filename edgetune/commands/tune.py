from __future__ import annotations

from pathlib import Path

import click

from edgetune.commands.common import not_built, set_option


@click.command()
@click.argument("recipe", required=False)
@set_option
@click.option(
    "--run-dir", type=click.Path(path_type=Path), help="Where to write the run (default: runs/<name>-<time>)."
)
@click.option(
    "--resume", is_flag=True, help="Continue the run in --run-dir (or runs/latest) from its last checkpoint."
)
def tune(recipe, overrides, run_dir, resume) -> None:
    """Fine-tune with LoRA (CPU) or QLoRA (CUDA). RECIPE is a YAML file or a bundled recipe name (default: demo)."""
    from edgetune.config import load_recipe

    load_recipe(recipe, list(overrides))  # validate before saying anything else
    not_built("tune", 3)
