"""The one-screen summary printed at the end of `edgetune tune`."""

from __future__ import annotations

import os

from rich.markup import escape

from edgetune.tune.run import TuneResult


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_summary(r: TuneResult, console) -> None:
    from rich.table import Table

    table = Table(title="edgetune tune", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    where = os.path.relpath(r.run_dir) if not os.path.relpath(r.run_dir).startswith("..") else str(r.run_dir)
    table.add_row("run", escape(where))
    table.add_row("method", f"{r.method} on {r.device}" + (" (bf16 autocast)" if r.bf16 else " (fp32)"))
    table.add_row("data", f"{r.train_examples} training examples, {r.train_tokens:,} tokens per epoch")
    stop = " (stopped early: validation loss stopped improving)" if r.stopped_early else ""
    resumed = f", resumed from step {r.resumed_from}" if r.resumed_from is not None else ""
    table.add_row("steps", f"{r.steps}/{r.max_steps} ({r.epochs:g} epochs){stop}{resumed}")
    if r.processes > 1:
        per_rank = r.examples_per_step // r.processes
        table.add_row(
            "batch", f"{r.examples_per_step} examples per step ({per_rank} x {r.processes} processes)"
        )
    if r.best_eval_loss is not None:
        change = ""
        if r.initial_eval_loss:
            change = f"  ({(r.best_eval_loss / r.initial_eval_loss - 1) * 100:+.0f}% from {r.initial_eval_loss:.4f} before training)"
        table.add_row("validation loss", f"best {r.best_eval_loss:.4f} at step {r.best_step}{change}")
    table.add_row("training loss", f"last {_fmt(r.final_train_loss)}")
    table.add_row("time", f"{r.wall_s:.0f} s, {r.tokens_per_s:.0f} tokens/s in training")
    table.add_row(
        "adapter",
        escape(f"{where}/adapter")
        + (" (best by validation loss)" if r.best_step is not None else " (last step)"),
    )
    if r.warnings:
        table.add_row("warnings", str(len(r.warnings)) + " (shown above)")
    table.add_row("next", "edgetune export")
    console.print(table)
