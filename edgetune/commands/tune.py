from __future__ import annotations

from pathlib import Path

import click

from edgetune.commands.common import allow_pickle_option, set_option, with_allow_pickle


@click.command()
@click.argument("recipe", required=False)
@set_option
@click.option(
    "--run-dir", type=click.Path(path_type=Path), help="Where to write the run (default: runs/<name>-<time>)."
)
@click.option(
    "--resume", is_flag=True, help="Continue the run in --run-dir (or runs/latest) from its last checkpoint."
)
@allow_pickle_option
def tune(recipe, overrides, run_dir, resume, allow_pickle) -> None:
    """Fine-tune with LoRA (CPU) or QLoRA (CUDA). RECIPE is a YAML file or a bundled recipe name (default: demo)."""
    from edgetune.console import err, out
    from edgetune.tune.distributed import end_launched_process, is_main_process
    from edgetune.tune.run import tune as run_tune
    from edgetune.tune.summary import print_summary

    result = run_tune(recipe, with_allow_pickle(overrides, allow_pickle), run_dir, resume, console=err)
    if is_main_process():
        print_summary(result, out)
    end_launched_process()
