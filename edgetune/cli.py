"""The `edgetune` command line: a thin Click layer over the library.

Subcommands live in edgetune/commands/ and are imported only when invoked (or asked for --help),
and none of those modules imports torch or transformers at import time, so `--help` is instant.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import logging
import os
import signal
import sys
import warnings
from pathlib import Path

import click

from edgetune import __version__
from edgetune.commands.common import NamingGroup
from edgetune.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EdgetuneError,
    InputError,
    Interrupted,
    Terminated,
    is_disk_full,
    missing_package,
    printable,
)
from edgetune.pathnames import shortened

# name -> (module, attribute, one-line help shown by `edgetune --help` without importing the module)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "tune": ("edgetune.commands.tune", "tune", "Fine-tune a base model on a dataset (LoRA / QLoRA)."),
    "merge": ("edgetune.commands.merge", "merge", "Merge a run's adapter into its base model."),
    "export": ("edgetune.commands.export", "export", "Export a run or HF model to GGUF and ONNX."),
    "bench": ("edgetune.commands.bench", "bench", "Measure accuracy retention and latency of exports."),
    "run": ("edgetune.commands.run", "run", "Tune, export and bench; skip stages that are up to date."),
    "data": ("edgetune.commands.data", "data", "Validate and describe datasets."),
    "chat": ("edgetune.commands.chat", "chat", "Talk to a merged model or an exported file."),
    "recipes": ("edgetune.commands.recipes", "recipes", "List the bundled recipes."),
    "doctor": ("edgetune.commands.doctor", "doctor", "Report the environment: torch, CUDA, runtimes."),
}


class LazyGroup(NamingGroup):
    def main(self, *args, **kwargs):
        _closed_streams()
        _unencodable_shown()
        return super().main(*args, **kwargs)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        if name not in READ_NO_FOLDER:  # before the command imports anything (torch dies there)
            _refuse_a_deleted_cwd()
        return name, command, rest

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module_name, attr, _ = COMMANDS[cmd_name]
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, short) for name, (_, _, short) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:  # `edgetune --bogus`: the same one line as a subcommand's
            _usage_error(exc)

    def invoke(self, ctx: click.Context):
        # bitsandbytes logs a warning about optional CPU kernels on import; nothing a user can act on
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        # peft 0.22 asks on import for transformers >= 5.6, which edgetune cannot take yet
        # (optimum-onnx 0.1.0 pins < 4.58; pyproject keeps peft below the 1.0 that drops it)
        warnings.filterwarnings(
            "ignore", r"Support for Transformers < [\d.]+ is deprecated in PEFT", FutureWarning
        )
        # onnxruntime's Linux wheels (1.32) send usage events with a device id they keep in
        # ~/.cache/Microsoft (and warn on every command where HOME is read-only); edgetune works
        # offline and says so: off unless the user set the variable (0 lets them through)
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        _stacks_on_sigusr1()
        received, before = _signals_interrupt()
        try:
            return super().invoke(ctx)  # NamingGroup's: a usage error names the subcommand
        except EdgetuneError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt as exc:  # Ctrl-C, Terminated, and Interrupted, which says how to go on
            said = str(exc) if isinstance(exc, Interrupted) else "interrupted"
            # the shell's status for a process a signal ended: 130 for SIGINT, 143 for SIGTERM, 129
            # for SIGHUP
            _fail(said, 128 + received[0] if received else 130)
        except BrokenPipeError:
            # the reader of stdout left (`edgetune recipes | head -1`): end as a Unix tool killed by
            # SIGPIPE does (status 141), saying nothing; no "internal error", no traceback at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(128 + 13)
        except click.exceptions.NoArgsIsHelpError:
            raise  # `edgetune data` alone: Click prints the help, as it should
        except click.UsageError as exc:
            _usage_error(exc)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:  # the last line of defence: never a raw traceback
            if os.environ.get("EDGETUNE_DEBUG"):
                raise
            missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
            if missing and not missing.startswith("edgetune"):  # a dependency the install lacks
                _fail(str(missing_package(missing)), EXIT_BAD_INPUT)
            if isinstance(exc, PermissionError) and exc.filename:  # a file this user may not read or write
                _fail(f"{_users_path(exc.filename)}: permission denied", EXIT_BAD_INPUT)
            if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:  # an --out, a data path
                where = _users_path(exc.filename) if exc.filename else "a path"
                _fail(f"{shortened(where, 56)}: a name or path too long for this file system", EXIT_BAD_INPUT)
            if isinstance(exc, OSError) and exc.errno == errno.EROFS:  # a run or --out on a read-only mount
                where = _users_path(exc.filename) if exc.filename else "a file"
                _fail(f"{where}: on a read-only file system", EXIT_BAD_INPUT)
            if is_disk_full(exc):
                where = getattr(exc, "filename", None)
                _fail(
                    f"{where + ': ' if where else ''}disk full (or file size limit reached): {exc}",
                    EXIT_INTERNAL,
                )
            _fail(
                f"internal error: {type(exc).__name__}: {exc} (set EDGETUNE_DEBUG=1 for the traceback)",
                EXIT_INTERNAL,
            )
        finally:
            for signum, handler in before.items():  # a program calling edgetune keeps its own handlers
                signal.signal(signum, handler)


# commands that read nothing from the current directory (or import torch, which dies without one)
READ_NO_FOLDER = {"recipes"}


def _refuse_a_deleted_cwd() -> None:
    """A shell still in a folder that was removed: relative paths (runs/, a recipe's data) cannot
    be found, and importing torch died with "Intel oneMKL FATAL ERROR"."""
    try:
        os.getcwd()
    except FileNotFoundError:
        raise InputError(
            "the current directory no longer exists (removed or moved); cd to one that does"
        ) from None


def _users_path(filename) -> str:
    """The path to name in an error: a temporary file edgetune writes beside its final name
    (".report.md.x1y2.tmp") means nothing to a user; its folder is what they can fix."""
    path = Path(os.fsdecode(filename))
    if path.name.startswith(".") and path.name.endswith(".tmp"):
        return f"{path.parent} (writing a file in it)"
    return str(path)


def _signals_interrupt() -> tuple[list[int], dict[int, object]]:
    """SIGTERM (`kill`, a CI job's timeout, systemd, `subprocess.terminate()`) and SIGHUP (the
    terminal closed, an ssh session dropped) stop edgetune as Ctrl-C does: checkpoints and files
    written whole, helper processes ended, the way to continue said. Their defaults killed the
    main process alone, with no word, leaving a quantiser child writing on and a 540 MB temporary
    file behind. A SIGHUP ignored on purpose (`nohup`) stays ignored. Returns the list a received
    signal is put in (a second one kills at once) and the handlers replaced (none where none could
    be set)."""
    received: list[int] = []

    def interrupt(signum, frame):
        received.append(signum)
        for handled in before:  # a second signal, of either kind, kills at once
            signal.signal(handled, signal.SIG_DFL)
        if signum == getattr(signal, "SIGHUP", None):
            _off_the_terminal(terminals)
        raise Terminated

    terminals = [fd for fd in (0, 1, 2) if _isatty(fd)]  # known now: a hung-up one no longer says so

    before: dict[int, object] = {}
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is None or (name == "SIGHUP" and signal.getsignal(signum) == signal.SIG_IGN):
            continue
        try:
            before[signum] = signal.signal(signum, interrupt)
        except ValueError:  # not the main thread (edgetune invoked from a thread of another program)
            return received, {}
    return received, before


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _off_the_terminal(terminals: list[int]) -> None:
    """After a hangup every write to the closed terminal fails (EIO): the first line of the cleanup,
    or the error line itself, raised an OSError in place of the interrupt, and edgetune ended with
    exit 1, not 129. The standard streams that were the terminal go to /dev/null instead."""
    for fd in terminals:
        try:
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, fd)
            os.close(null)
        except OSError:
            pass


def _stacks_on_sigusr1() -> None:
    """`kill -USR1 <pid>` makes edgetune print every thread's stack to stderr and carry on: what a run
    that seems stuck (a rank waiting on the others, a slow save) is doing at that moment."""
    import faulthandler
    import signal

    if not hasattr(signal, "SIGUSR1"):
        return
    try:
        faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)
    except (AttributeError, OSError, ValueError):  # no real stderr (embedded, pythonw)
        pass


def _closed_streams() -> None:
    """A standard stream the shell closed (`<&-`, `>&-`, `2>&-`) gets /dev/null on its descriptor, so
    no file edgetune opens is given 0, 1 or 2, where a library's print would land in it. Results are
    what stdout is for: with it closed, edgetune stops before any work, as a Unix tool fails to write."""
    closed = []
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        setattr(sys, name, open(fd, mode, encoding="utf-8", errors="surrogateescape", closefd=False))
        closed.append(name)
    if "stdout" in closed:
        _fail(
            "standard output is closed (`>&-`); to discard edgetune's results send them to /dev/null",
            EXIT_BAD_INPUT,
        )


def _unencodable_shown() -> None:
    """Output to a stream that cannot encode every character (PYTHONIOENCODING=ascii, a Windows
    code page): a character it lacks is written as its escape (\\u27e6), not an internal error."""
    for stream in (sys.stdout, sys.stderr):
        if (getattr(stream, "encoding", None) or "utf-8").lower().replace("-", "") != "utf8":
            with contextlib.suppress(AttributeError, ValueError):  # not a TextIOWrapper (a test's capture)
                stream.reconfigure(errors="backslashreplace")


def _usage_error(exc: click.UsageError) -> None:
    """A bad option is bad input like any other: one line, exit 2, pointing at the help."""
    command = exc.ctx.command_path if exc.ctx else getattr(exc, "command_path", "edgetune")
    _fail(f"{exc.format_message()} (see `{command} --help`)", exc.exit_code)


def _fail(message: str, code: int) -> None:
    first_line = message.strip().splitlines()[0] if message.strip() else "failed"
    click.echo(f"edgetune: error: {printable(first_line)}", err=True)
    from edgetune.tune.distributed import end_launched_process

    end_launched_process(code)  # a launched rank keeps its exit code (see there)
    sys.exit(code)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgetune")
def main() -> None:
    """Fine-tune a small language model, export it to GGUF and ONNX, and prove the export still works.

    \b
    Typical use:
      edgetune tune                 # the bundled demo recipe
      edgetune export               # the last run (runs/latest)
      edgetune bench --gate
    """
