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
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def kept_process_state() -> Iterator[None]:
    """Restore on the way out (an error's included) what the body changed of: os.environ, torch's
    thread count, the RNGs of random, numpy and torch (CUDA's where CUDA was initialised before),
    transformers' verbosity, the warnings filters, and accelerate's AcceleratorState (which keeps
    the mixed precision the Trainer chose). Only what was there before the body is put back: what
    the body computes is its own, so seeded stages stay as deterministic as they were."""
    import numpy as np
    import torch
    import transformers

    environ = dict(os.environ)
    threads = torch.get_num_threads()
    verbosity = transformers.logging.get_verbosity()
    rngs = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    # only where it is already up: reading a device's state would start CUDA on every GPU from
    # each rank of a launched run
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    accelerator = _accelerator_state()
    saved_accelerator = dict(accelerator) if accelerator is not None else None
    try:
        with warnings.catch_warnings():
            yield
    finally:
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        os.environ.update({k: v for k, v in environ.items() if os.environ.get(k) != v})
        torch.set_num_threads(threads)
        transformers.logging.set_verbosity(verbosity)
        random.setstate(rngs[0])
        np.random.set_state(rngs[1])
        torch.random.set_rng_state(rngs[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        if (accelerator := _accelerator_state()) is not None:
            # the next Accelerator() reads the environment again, as it would have before the body
            accelerator.clear()
            accelerator.update(saved_accelerator or {})


def _accelerator_state() -> dict | None:
    """accelerate's AcceleratorState, shared by every instance (None before accelerate is imported).
    PartialState, which holds a launched run's process group, is left as it is."""
    state = sys.modules.get("accelerate.state")
    return None if state is None else state.AcceleratorState._shared_state
