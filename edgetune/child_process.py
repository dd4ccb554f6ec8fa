"""Helper processes edgetune starts (llama.cpp's quantiser, latency measurements) end with it."""

from __future__ import annotations

import os
import sys


def die_with_parent(parent: int) -> None:
    """End this process when `parent` dies: a child whose edgetune was killed (kill -9, or a
    SIGTERM sent to the main process alone, which leaves no cleanup) went on beside the next run:
    a latency child skewing its timings on shared cores, a quantiser writing gigabytes no lock
    guards. Linux's PR_SET_PDEATHSIG; elsewhere nothing (on Windows ctypes.CDLL(None) raises
    TypeError and signal has no SIGKILL: the quantiser and every latency child failed there)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the call above
        os._exit(1)
