"""Shared terminal output: one rich console on stderr for progress, stdout for results."""

from __future__ import annotations

from rich.console import Console

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
