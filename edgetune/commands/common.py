"""Options and helpers shared by several commands."""

from __future__ import annotations

import click


class NamingGroup(click.Group):
    """A group whose subcommand's bad option names that subcommand: Click raises "Option '--to'
    requires an argument" with no context, and the help pointed at was the top command's."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            if exc.ctx is None and not hasattr(exc, "command_path") and ctx.invoked_subcommand:
                exc.command_path = f"{ctx.command_path} {ctx.invoked_subcommand}"
            raise


set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe value, e.g. --set train.lr=1e-4 (repeatable).",
)


allow_pickle_option = click.option(
    "--allow-pickle",
    is_flag=True,
    help="Accept .bin/.pt (pickle) weights for a local base model; they can run code when loaded.",
)


def with_allow_pickle(overrides: tuple[str, ...] | list[str], allow_pickle: bool) -> list[str]:
    return [*overrides, "model.allow_pickle=true"] if allow_pickle else list(overrides)


def one_process(command: str) -> None:
    """Refuse a command that writes into a run directory when a launcher started it on several
    processes: each would write the same files at once. Only `edgetune tune` runs that way."""
    import os

    from edgetune.errors import InputError
    from edgetune.tune.distributed import world_size

    world = world_size()
    # torchrun, accelerate and deepspeed set LOCAL_RANK; a cluster that exports WORLD_SIZE to every
    # machine without launching edgetune is not refused
    if world > 1 and "LOCAL_RANK" in os.environ:
        raise InputError(
            f"`edgetune {command}` runs in one process, and a launcher started {world}: launch only "
            f"`edgetune tune` that way, then run `edgetune {command}` without the launcher"
        )
