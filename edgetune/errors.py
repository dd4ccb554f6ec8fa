"""One error family. The library raises these; the CLI prints them as one line and exits with the code.

Exit codes (a contract for Makefiles): 0 ok, 1 internal failure, 2 bad input, 3 a bench gate failed.
"""

from __future__ import annotations

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


class Interrupted(EdgetuneError):
    """Ctrl-C: the message says how to continue."""

    exit_code = 130


class GateFailed(EdgetuneError):
    exit_code = EXIT_GATE
