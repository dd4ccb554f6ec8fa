"""GPU memory a bench target holds, the same way for every runtime (torch, onnxruntime, llama.cpp).

Read through NVML (the `nvidia-ml-py` package): the driver's count for this process where it reports
one, else the device's used memory less what was used before this process touched the GPU (in
containers the driver often sees other process ids than ours). Both include the CUDA context, which
is part of what a target costs on a GPU. Sampled after loading and after every timed run; the peak of
those samples is reported. The three runtimes keep what they allocated (caching allocators, static
KV buffers), so the memory held after a run is the peak of that run.
"""

from __future__ import annotations

import os


def _first_visible_gpu() -> int:
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


class VramProbe:
    """Create before the model loads; `sample()` after each phase; `peak_bytes` at the end (None
    when NVML cannot be read here)."""

    def __init__(self, nvml=None):
        self.nvml, self.handle, self.baseline, self.peak_bytes = None, None, 0, None
        try:
            if nvml is None:
                import pynvml as nvml
            nvml.nvmlInit()
            self.handle = nvml.nvmlDeviceGetHandleByIndex(_first_visible_gpu())
            self.baseline = int(nvml.nvmlDeviceGetMemoryInfo(self.handle).used)
            self.nvml = nvml
        except Exception:  # noqa: BLE001 - no NVML, no driver, no GPU: nothing to report
            self.nvml = None

    def held_bytes(self) -> int | None:
        if self.nvml is None:
            return None
        try:
            for proc in self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory:
                    return int(proc.usedGpuMemory)
        except Exception:  # noqa: BLE001 - some drivers refuse the per-process query
            pass
        used = int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used)
        return max(used - self.baseline, 0)

    def sample(self) -> None:
        held = self.held_bytes()
        if held is not None:
            self.peak_bytes = max(self.peak_bytes or 0, held)
