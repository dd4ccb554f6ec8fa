from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource
from rich.markup import escape

from edgetune.commands.common import allow_pickle_option, one_process, set_option, with_allow_pickle


@click.command()
@click.argument("recipe", required=False)
@set_option
@click.option(
    "--run-dir", type=click.Path(path_type=Path), help="Run directory (default: runs/<recipe name>)."
)
@click.option(
    "--gate/--no-gate",
    default=True,
    show_default=True,
    help="Exit 3 when a bench gate fails, or an exported file failed its parity check.",
)
@click.option(
    "--pick",
    is_flag=True,
    help="Print only the path of the smallest artifact that passes every gate (exit 3 when none does; "
    "with an explicit --gate, also when any other fails).",
)
@click.option(
    "--until",
    type=click.Choice(["data", "tune", "merge", "export", "bench"]),
    default="bench",
    show_default=True,
    help="The last stage to run; a later `edgetune run` goes on from there.",
)
@allow_pickle_option
def run(recipe, overrides, run_dir, gate, pick, until, allow_pickle) -> None:
    """Data check, tune, merge, export and bench RECIPE (default: the demo) in one run directory;
    stages whose inputs are unchanged since they last finished are skipped."""
    one_process("run")
    from edgetune.bench.gates import raise_on_failed_gates
    from edgetune.bench.report import print_findings, print_table
    from edgetune.console import err, out
    from edgetune.pipeline import run_pipeline

    result = run_pipeline(
        recipe,
        with_allow_pickle(overrides, allow_pickle),
        run_dir,
        console=err,
        pick=pick,
        until=until,
        gated=gate,
    )
    if pick:
        from edgetune.bench.gates import pick as pick_target

        click.echo(pick_target(result.report, result.run_dir)["path"])
        # --gate is on by default, and a pick passes over the files that fail: only a --gate given
        # with --pick also fails the run on them, as `bench --pick --gate` does
        if click.get_current_context().get_parameter_source("gate") == ParameterSource.COMMANDLINE and gate:
            raise_on_failed_gates(result.report, err)
        return
    if result.report is not None:
        print_table(result.report, out)
        print_findings(result.report, out, err)
    ran = ", ".join(result.ran) or "nothing"
    skipped = ", ".join(result.skipped) or "nothing"
    out.print(
        f"{escape(str(result.run_dir))}: ran {ran}; skipped {skipped} (up to date) in {result.wall_s:.0f} s",
        soft_wrap=True,
    )
    if gate and result.report is not None:
        raise_on_failed_gates(result.report, err)  # a file that failed its export parity fails them too
    elif gate and result.export_problems:
        from edgetune.errors import GateFailed

        raise GateFailed("export parity failed: " + "; ".join(result.export_problems))
