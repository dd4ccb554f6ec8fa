"""What a stage changes for the whole process, put back when it returns.

tune, merge and bench run inside other people's Python too (a notebook, a service, `edgetune run`'s
later stages). Each sets what it needs for itself: torch's thread count, transformers' log
verbosity, a warnings filter, seeded RNGs, and (tune, through transformers and accelerate) the
environment's ACCELERATE_MIXED_PRECISION. Left set, the caller's own Trainer(bf16=False) trained in
bf16 after a bf16 tune, and a second tune in the process warned of a launcher it did not have.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import threading
import warnings
from collections.abc import Iterator

_guard = threading.Lock()
_stages = 0  # stages running in this process, in any thread
_saved: dict | None = None  # what the process had before the first of them began


@contextlib.contextmanager
def kept_process_state() -> Iterator[None]:
    """Restore on the way out (an error's included) what the body changed of: os.environ, torch's
    thread count, the RNGs of random, numpy and torch (CUDA's where CUDA was initialised before),
    transformers' verbosity, the warnings filters, and accelerate's AcceleratorState (which keeps
    the mixed precision the Trainer chose). Only what was there before the body is put back: what
    the body computes is its own, so seeded stages stay as deterministic as they were.

    Stages that overlap (a service's threads, each in its own run; export merging first) share the
    process: the first to begin saves it and the last to end puts it back. A stage that ended
    restoring under one still running wiped that one's AcceleratorState, its environment and its
    seeded generator."""
    global _stages, _saved
    with _guard:
        if _stages == 0:
            _saved = _snapshot()
        _stages += 1
    try:
        yield
    finally:
        with _guard:
            _stages -= 1
            if _stages == 0 and _saved is not None:
                saved, _saved = _saved, None
                _restore(saved)


def _snapshot() -> dict:
    import numpy as np
    import torch
    import transformers

    accelerator = _accelerator_state()
    return {
        "environ": dict(os.environ),
        "threads": torch.get_num_threads(),
        "verbosity": transformers.logging.get_verbosity(),
        "filters": list(warnings.filters),
        "rngs": (random.getstate(), np.random.get_state(), torch.random.get_rng_state()),
        # only where it is already up: reading a device's state would start CUDA on every GPU from
        # each rank of a launched run
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "accelerator": dict(accelerator) if accelerator is not None else None,
    }


def _restore(saved: dict) -> None:
    import numpy as np
    import torch
    import transformers

    environ = saved["environ"]
    for key in set(os.environ) - set(environ):
        del os.environ[key]
    os.environ.update({k: v for k, v in environ.items() if os.environ.get(k) != v})
    torch.set_num_threads(saved["threads"])
    transformers.logging.set_verbosity(saved["verbosity"])
    warnings.filters[:] = saved["filters"]
    getattr(warnings, "_filters_mutated", lambda: None)()  # as catch_warnings does on exit
    python_rng, numpy_rng, torch_rng = saved["rngs"]
    random.setstate(python_rng)
    np.random.set_state(numpy_rng)
    torch.random.set_rng_state(torch_rng)
    if saved["cuda"] is not None:
        torch.cuda.set_rng_state_all(saved["cuda"])
    if (accelerator := _accelerator_state()) is not None:
        # the next Accelerator() reads the environment again, as it would have before the body
        accelerator.clear()
        accelerator.update(saved["accelerator"] or {})


def _accelerator_state() -> dict | None:
    """accelerate's AcceleratorState, shared by every instance (None before accelerate is imported).
    PartialState, which holds a launched run's process group, is left as it is."""
    state = sys.modules.get("accelerate.state")
    return None if state is None else state.AcceleratorState._shared_state
