"""One error family. The library raises these; the CLI prints them as one line and exits with the code.

Exit codes (a contract for Makefiles): 0 ok, 1 internal failure, 2 bad input, 3 a bench gate failed.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """text with its control characters shown (\\x1b), not sent: a row of a dataset, a model's
    file or its output can hold a terminal's escape sequences (a colour, a window title, a cleared
    screen). Newlines and tabs stay."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_GATE = 3


class EdgetuneError(Exception):
    """Base class: a failure we understand and can explain in one line."""

    exit_code = EXIT_INTERNAL


class InputError(EdgetuneError):
    """The user gave us something we cannot use (file, option, value)."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(InputError):
    """A recipe or --set override is invalid. Carries every problem at once."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}invalid recipe: " + "; ".join(self.problems))


class DataError(InputError):
    """A dataset file or row is invalid; the message names file:line and field."""


class ModelError(InputError):
    """A base model cannot be resolved or loaded."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM): the message says how to continue. A KeyboardInterrupt, as Terminated
    is, and no EdgetuneError: a program's `except EdgetuneError:` for bad input (or its `except
    Exception:`) took a user's Ctrl-C for a failed job and went on. The CLI prints the message
    and exits 130 (143 for SIGTERM, 129 for SIGHUP)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled as Ctrl-C is (see cli._signals_interrupt), but never taken for a user's
    Ctrl-C that only stops one thing (a chat answer)."""


class GateFailed(EdgetuneError):
    exit_code = EXIT_GATE


class DiskFull(EdgetuneError):
    """Writing failed for lack of space (or a file-size limit); earlier outputs are untouched."""


DISK_FULL_ERRNOS = {28, 27, 122}  # ENOSPC, EFBIG, EDQUOT
DISK_FULL_TEXT = (
    "No space left on device",
    "File too large",
    "Disk quota exceeded",
    "os error 28",
    "os error 27",
    # torch.save's zip writer on a short write: "[enforce fail at inline_container.cc] . unexpected
    # pos 8128 vs 8016", or "PytorchStreamWriter failed writing file"
    "PytorchStreamWriter failed writing",
    "unexpected pos ",
)


def is_disk_full(exc: BaseException) -> bool:
    """OSErrors by errno; libraries that wrap them (safetensors, torch) by their message."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    if isinstance(exc, OSError) and " requested and " in str(exc) and str(exc).endswith(" written"):
        return True  # numpy's tofile on a short write (the gguf writer uses it)
    return any(text in str(exc) for text in DISK_FULL_TEXT)


@contextmanager
def writing(path) -> Iterator[None]:
    """Turn a disk-full error while writing `path` into one DiskFull line naming it."""
    try:
        yield
    except EdgetuneError:
        raise
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        raise disk_full(path) from None


def disk_full(path) -> DiskFull:
    return DiskFull(
        f"{path}: disk full (or file size limit reached) while writing it; "
        "earlier outputs are intact, free some space and run the command again"
    )


# import name -> what pip installs it as, where they differ (optimum's ONNX exporter is a package
# of its own that installs into optimum's namespace)
PIP_NAMES = {
    "llama_cpp": "llama-cpp-python",
    "optimum.exporters.onnx": "optimum-onnx[onnxruntime]",
    "optimum": "optimum-onnx[onnxruntime]",
    "yaml": "pyyaml",
    "google.protobuf": "protobuf",
    "pynvml": "nvidia-ml-py",
}


def missing_package(module: str, needed_for: str = "") -> InputError:
    """What to say when a package edgetune depends on is not installed here (a broken or partial
    install: pyproject lists every one)."""
    named = sorted(PIP_NAMES, key=len, reverse=True)  # the longest: optimum.exporters.onnx before optimum
    top = next((name for name in named if module == name or module.startswith(name + ".")), None)
    top = top or module.split(".")[0]
    pip = PIP_NAMES.get(top, top)
    purpose = f" ({needed_for})" if needed_for else ""
    if module.split(".")[0] in sys.stdlib_module_names:  # `pip install resource` is another project
        return InputError(
            f"this platform's Python lacks {module}, a module of Python's standard library{purpose}: "
            "pip cannot install it (Windows has no resource or fcntl; see Platforms in edgetune's README)"
        )
    if top != module and _found(top):  # installed, but not a version that has this module
        return InputError(
            f"the installed Python package {pip} has no module {module}{purpose}: not a version edgetune "
            "works with; reinstalling edgetune (`make install` in its checkout) sets up the versions "
            "it is tested with"
        )
    return InputError(
        f"the Python package {pip} is not installed here{purpose}: "
        f"`pip install '{pip}'`, or `make install` in edgetune's checkout for every dependency"
    )


def _found(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken one
        return False


def require(module: str, needed_for: str) -> None:
    """missing_package, raised before any work that needs `module` starts, not after it."""
    if not _found(module):
        raise missing_package(module, needed_for)
