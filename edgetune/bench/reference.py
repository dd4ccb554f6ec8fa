"""The reference model's distributions, kept while every other target is measured against them.

Each is float32 [positions, vocab]: the demo's 16 chats (2,714 tokens) are 0.53 GB with SmolLM2's
49k vocabulary and would be 2.8 GB with Gemma's 262k. Up to MEMORY_BYTES stay in memory; the rest
are written to .npy files in a hidden folder of the run directory (not /tmp, often a RAM disk) and
read back memory-mapped, so the KL still covers every one of bench.kl_examples without holding
them all in RAM.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgetune.errors import DiskFull, writing

MEMORY_BYTES = 1 << 30
SPILL_PREFIX = ".bench-reference-"


class ReferenceLogprobs:
    """A read-only sequence of the reference's log-probabilities, one array per case; a context
    manager whose exit removes the spilled files."""

    def __init__(self, spill_parent: Path, memory_bytes: int = MEMORY_BYTES):
        self._parent = Path(spill_parent)
        self._memory_bytes = memory_bytes
        self._held = 0
        self._arrays: list[np.ndarray] = []
        self._spill: Path | None = None

    def append(self, logprobs: np.ndarray) -> None:
        array = np.ascontiguousarray(logprobs, dtype=np.float32)
        if self._held + array.nbytes <= self._memory_bytes:
            self._held += array.nbytes
            self._arrays.append(array)
            return
        try:
            with writing(self._parent):  # a full disk: one line, and nothing left behind
                if self._spill is None:
                    self._spill = Path(tempfile.mkdtemp(prefix=SPILL_PREFIX, dir=self._parent))
                path = self._spill / f"{len(self._arrays)}.npy"
                np.save(path, array)
        except DiskFull as e:
            self.close()
            raise DiskFull(
                f"{e} (keeping the KL's reference distributions; or lower bench.kl_examples)"
            ) from None
        except BaseException:
            self.close()
            raise
        self._arrays.append(np.load(path, mmap_mode="r"))

    @property
    def spilled(self) -> int:
        """How many were written to disk rather than held in memory."""
        return sum(isinstance(a, np.memmap) for a in self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def __getitem__(self, i: int) -> np.ndarray:
        return self._arrays[i]

    def close(self) -> None:
        self._arrays, self._held = [], 0  # the memory maps first: their files are removed next
        if self._spill is not None:
            shutil.rmtree(self._spill, ignore_errors=True)
            self._spill = None

    def __enter__(self) -> ReferenceLogprobs:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def remove_stale_spills(parent: Path) -> None:
    """What a killed bench left (bench calls it once it holds the run's lock: no other bench is
    using them)."""
    for stale in Path(parent).glob(f"{SPILL_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
