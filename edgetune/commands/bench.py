from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from edgetune.commands.common import one_process


@click.command()
@click.argument("run_dir", required=False, type=click.Path(path_type=Path))
@click.option("--device", "devices", default=None, help="Comma-separated: cpu,cuda (default: the recipe's).")
@click.option("--gate", is_flag=True, help="Exit 3 listing every gate in the recipe that fails.")
@click.option(
    "--pick",
    is_flag=True,
    help="Print only the path of the smallest artifact that passes every gate (exit 3 when none does; "
    "with --gate, also when any other fails).",
)
@click.option(
    "--regate",
    is_flag=True,
    help="Measure nothing: re-apply the run's recipe's gates to its existing report (seconds).",
)
@click.option(
    "--compare",
    "other",
    type=click.Path(path_type=Path),
    metavar="OTHER",
    help="Measure nothing: compare the run's report with OTHER run's, paired on their shared held-out "
    "examples; with --gate, exit 3 when a target is worse beyond noise.",
)
def bench(run_dir, devices, gate, pick, regate, other) -> None:
    """Accuracy retention, prompting baselines, forgetting and latency of a run's exports
    (default: runs/latest) -> RUN_DIR/bench/report.{json,md,png}."""
    one_process("bench")
    if devices is not None:
        devices = [d.strip() for d in devices.split(",") if d.strip()]
        if not devices:  # `--device ""` must not quietly mean the recipe's list
            raise click.UsageError("--device names nothing; give cpu, cuda or cpu,cuda, or leave it out")
    if other is not None:
        return _compare(run_dir, other, gate, devices or pick or regate)
    from edgetune.bench.gates import pick as pick_target
    from edgetune.bench.gates import raise_on_failed_gates
    from edgetune.bench.report import print_findings, print_table
    from edgetune.bench.run import bench as run_bench
    from edgetune.console import err, out
    from edgetune.rundir import resolve_run_dir

    if regate:
        from edgetune.bench.regate import regate_run

        if devices:
            raise click.UsageError("--regate measures nothing: it takes no --device")
        report, _ = regate_run(run_dir)
    else:
        report = run_bench(run_dir, devices, console=err, pick=pick)
    if pick:  # with --gate too: the path, then exit 3 if any target failed (the pick passed it over)
        click.echo(pick_target(report, resolve_run_dir(run_dir))["path"])
        if gate:
            raise_on_failed_gates(report, err)
        return
    print_table(report, out)
    print_findings(report, out, err)
    out.print(f"report: {escape(report['paths']['md'])}", soft_wrap=True)
    if gate:
        raise_on_failed_gates(report, err)


def _compare(run_dir, other, gate, other_flags) -> None:
    from edgetune.bench.compare import compare_runs, print_comparison, raise_on_worse
    from edgetune.console import out
    from edgetune.rundir import resolve_run_dir

    if other_flags:
        raise click.UsageError("--compare measures nothing: it takes no --device, --pick or --regate")
    before_dir, after_dir = resolve_run_dir(other, "--compare"), resolve_run_dir(run_dir)
    if before_dir == after_dir:
        raise click.UsageError(f"--compare {other}: that is the run itself; compare two different runs")
    changes, kl, before, after, level = compare_runs(before_dir, after_dir)
    print_comparison(changes, kl, before, after, level, out)
    if gate:
        raise_on_worse(changes)
