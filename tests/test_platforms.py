"""edgetune where the platform lacks an API Linux has (Windows, macOS), simulated on Linux by
taking the API away: what it needs falls back, and nothing fails for want of it."""

import os
import stat


def test_an_atomic_write_without_fchmod_works_and_gets_the_mode(tmp_path, monkeypatch):
    """os.fchmod is missing on Windows before Python 3.13: every atomic write failed there with
    AttributeError. The mode is now set by the temporary file's path once it is closed."""
    from edgetune.rundir import atomic_write_files

    monkeypatch.delattr(os, "fchmod")
    kept = tmp_path / "manifest.json"
    kept.write_text("{}")
    kept.chmod(0o640)  # the user's mode on the file being replaced outlives the write
    fresh = tmp_path / "report.md"
    atomic_write_files({kept: b'{"a": 1}', fresh: b"# report\n"})
    assert kept.read_bytes() == b'{"a": 1}' and fresh.read_bytes() == b"# report\n"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "report.md"]


def _fsync_refusing_read_only_descriptors(monkeypatch):
    """os.fsync as Windows has it: FlushFileBuffers needs a handle that can write the file, so an
    fsync of a file opened read-only fails with EBADF."""
    import errno
    import fcntl

    fsync = os.fsync

    def windows_fsync(fd):
        fd = fd if isinstance(fd, int) else fd.fileno()
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "Bad file descriptor")
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", windows_fsync)


def test_a_checkpoint_commit_and_an_atomic_dir_fsync_as_windows_allows(tmp_path, monkeypatch):
    """fsync_file opened the file "rb": on Windows every checkpoint commit and atomic_dir (merge,
    export) failed with EBADF. It now fsyncs through a descriptor that can write the file."""
    from types import SimpleNamespace

    from edgetune.rundir import atomic_dir
    from edgetune.tune.callbacks import COMPLETE, CommitCheckpoints

    _fsync_refusing_read_only_descriptors(monkeypatch)
    ckpt = tmp_path / "checkpoints" / "checkpoint-3"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_model.safetensors").write_bytes(b"weights")
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 3}\n')
    args = SimpleNamespace(output_dir=str(ckpt.parent))
    state = SimpleNamespace(is_world_process_zero=True, global_step=3)
    CommitCheckpoints(metrics).on_save(args, state, control=None)
    assert (ckpt / COMPLETE).is_file()
    with atomic_dir(tmp_path / "merged") as staging:
        (staging / "model.safetensors").write_bytes(b"merged")
    assert (tmp_path / "merged" / "model.safetensors").read_bytes() == b"merged"


def test_a_gguf_convert_and_quantise_fsync_as_windows_allows(tmp_path, tiny_model_dir, monkeypatch):
    """The GGUF converter and quantiser fsynced their output opened "rb": EBADF on Windows."""
    from edgetune.export.gguf_convert import convert
    from edgetune.export.gguf_quantize import quantize

    _fsync_refusing_read_only_descriptors(monkeypatch)
    source = convert(tiny_model_dir, tmp_path / "f32.gguf")
    out = quantize(source, tmp_path / "model-q8_0.gguf", "q8_0", threads=1)
    assert out.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["f32.gguf", "model-q8_0.gguf"]


def test_a_helper_process_off_linux_starts_without_its_parent_death_signal(monkeypatch):
    """die_with_parent called ctypes.CDLL(None), which raises TypeError on Windows (where signal
    has no SIGKILL either): the GGUF quantiser and every bench latency child failed there."""
    import ctypes
    import signal
    import sys

    from edgetune.child_process import die_with_parent

    def windows_cdll(name, *args, **kwargs):
        raise TypeError("argument of type 'NoneType' is not iterable")  # CPython's Windows path

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(ctypes, "CDLL", windows_cdll)
    monkeypatch.delattr(signal, "SIGKILL")
    assert die_with_parent(os.getppid()) is None


def test_bench_latency_without_proc_or_resource_reports_no_peak_rss(tmp_path, monkeypatch):
    """bench/latency.py imported `resource` at its top: on Windows (no such module) bench failed
    with "pip install 'resource'", an unrelated PyPI package. It is imported where it is used, and
    the peak RSS is None where neither /proc nor resource tells it; the report shows "-"."""
    import importlib
    import sys
    from pathlib import Path

    import numpy as np

    import edgetune.bench
    from edgetune.bench import runners
    from edgetune.bench.report import COLUMNS, row_cells

    monkeypatch.setitem(sys.modules, "resource", None)  # `import resource` raises ImportError
    monkeypatch.delitem(sys.modules, "edgetune.bench.latency", raising=False)  # imported anew, and
    monkeypatch.delattr(edgetune.bench, "latency", raising=False)  # the one before it put back after
    latency = importlib.import_module("edgetune.bench.latency")
    read_text = Path.read_text

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc"):
            raise FileNotFoundError(str(path))
        return read_text(path, *args, **kwargs)

    class Runner:
        def prefill(self, ids):
            return np.zeros(8)

        def step(self, token):
            return np.zeros(8)

    monkeypatch.setattr(Path, "read_text", no_proc)
    monkeypatch.setattr(runners, "open_runner", lambda target, threads, **kwargs: Runner())
    target = {"name": "gguf/q8_0", "format": "gguf", "quant": "q8_0", "runtime": "llama.cpp"}
    target |= {"device": "cpu", "path": str(tmp_path / "model-q8_0.gguf")}
    request = {"target": target, "prompt_ids": [1, 2, 3], "decode_tokens": 2, "repeats": 1, "threads": 1}
    measured = latency._child(request)
    assert measured["peak_rss_mb"] is None and measured["decode_tok_s"] > 0
    row = {**target, "size_bytes": 1, "task_metric": {"value": 0.5}, **measured}
    assert row_cells(row, list(COLUMNS))[COLUMNS.index("RSS")] == "-"


def test_a_standard_module_the_platform_lacks_is_not_sent_to_pip():
    """A module of the standard library missing (resource, fcntl on Windows) was named as a package
    to install: `pip install 'resource'` fetches an unrelated project from PyPI."""
    from edgetune.errors import missing_package

    said = str(missing_package("resource"))
    assert "this platform's Python lacks resource, a module of Python's standard library" in said
    assert "pip install" not in said and "pip cannot install it" in said
    assert "pip install 'llama-cpp-python'" in str(missing_package("llama_cpp"))  # a package still is


def test_the_peak_rss_from_getrusage_is_bytes_on_macos_kib_elsewhere(monkeypatch):
    """ru_maxrss is in bytes on macOS and in KiB on Linux: bench multiplied it by 1024 everywhere,
    so a Mac's peak RSS (macOS has no /proc) read 1024 times too large."""
    import resource
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    from edgetune.bench.latency import peak_rss_bytes

    def no_proc(path, *args, **kwargs):
        raise FileNotFoundError(str(path))

    monkeypatch.setattr(Path, "read_text", no_proc)
    monkeypatch.setattr(resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=300 * 2**20))
    monkeypatch.setattr(sys, "platform", "darwin")
    assert peak_rss_bytes() == 300 * 2**20
    monkeypatch.setattr(sys, "platform", "freebsd14")  # KiB, as on Linux
    assert peak_rss_bytes() == 300 * 2**30


def test_chat_on_cuda_needs_cuda_not_any_gpu_offload(tmp_path, tiny_model_dir, monkeypatch):
    """llama-cpp-python's GPU offload is Metal on Apple Silicon: `edgetune chat --device cuda` on a
    GGUF file was accepted on a Mac, which has no CUDA. torch must now see a CUDA device."""
    import llama_cpp
    import pytest
    import torch

    from edgetune.chat import open_chat
    from edgetune.errors import ModelError
    from edgetune.export.gguf_convert import convert

    gguf = convert(tiny_model_dir, tmp_path / "model-f32.gguf")
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: True)  # Metal
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelError, match="--device: cuda, but torch sees no CUDA device"):
        open_chat(gguf, device="cuda")
