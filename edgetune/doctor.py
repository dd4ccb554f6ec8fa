"""`edgetune doctor`: what this environment can do, and the command that fixes each missing piece."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    needed: bool = True  # False: what it lacks limits a feature (CUDA, QLoRA), every command still runs

    @property
    def problem(self) -> bool:
        """Missing something an edgetune command would refuse to run without."""
        return self.needed and not self.ok


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _package(dist: str, fix: str, needed: bool = True) -> Check:
    v = _version(dist)
    return Check(dist, v is not None, v or "not installed", "" if v else fix, needed)


def run_checks() -> list[Check]:
    py_ok = sys.version_info >= (3, 10)
    checks = [
        Check(
            "python",
            py_ok,
            f"{platform.python_version()} ({platform.machine()})",
            "" if py_ok else "use Python 3.10 or newer",
        )
    ]
    try:
        import torch

        cuda = torch.cuda.is_available()
        devices = (
            ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) if cuda else ""
        )
        checks.append(Check("torch", True, f"{torch.__version__}, {torch.get_num_threads()} CPU threads"))
        checks.append(
            Check(
                "cuda",
                cuda,
                devices or "not available: training uses LoRA on the CPU",
                ""
                if cuda
                else "for QLoRA: a CUDA build of torch (make install TORCH_SPEC=torch in a checkout)",
                needed=False,
            )
        )
    except ImportError:
        checks.append(Check("torch", False, "not installed", _reinstall(["torch"])))
    for dist in ("transformers", "peft", "accelerate", "gguf"):
        checks.append(_package(dist, _reinstall([dist])))
    checks.append(_package("bitsandbytes", "pip install bitsandbytes   (needed for QLoRA)", needed=False))
    checks.append(_package("optimum-onnx", 'pip install "optimum-onnx[onnxruntime]==0.1.0"   (ONNX export)'))
    checks.append(_package("onnx-ir", "pip install onnx-ir   (onnxruntime's int4/int8 quantiser)"))
    checks.append(
        _package(
            "onnxruntime-genai",
            "pip install onnxruntime-genai   (the ONNX parity check runs each folder in it too)",
            needed=not (sys.platform == "darwin" and platform.machine() == "x86_64"),  # no wheel there
        )
    )
    checks.append(_package("matplotlib", "pip install matplotlib   (bench/report.png)"))
    checks.append(_dependencies())
    try:
        ort = importlib.import_module("onnxruntime")
        checks.append(
            Check(
                "onnxruntime",
                True,
                f"{ort.__version__}; providers: {', '.join(ort.get_available_providers())}",
                ""
                if "CUDAExecutionProvider" in ort.get_available_providers()
                else "for CUDA targets in bench: pip install onnxruntime-gpu (instead of onnxruntime)",
            )
        )
    except ImportError:
        checks.append(
            Check("onnxruntime", False, "not installed", "pip install onnxruntime   (ONNX export and bench)")
        )
    try:
        llama_cpp = importlib.import_module("llama_cpp")
        gpu = bool(llama_cpp.llama_supports_gpu_offload())
        checks.append(
            Check(
                "llama.cpp",
                True,
                f"llama-cpp-python {llama_cpp.__version__}, {'GPU offload' if gpu else 'CPU only'} build",
                ""
                if gpu
                else 'for CUDA: CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall '
                "--no-cache-dir llama-cpp-python==0.3.36",
            )
        )
    except ImportError:
        checks.append(
            Check("llama.cpp", False, "llama-cpp-python not installed", _reinstall(["llama-cpp-python"]))
        )
    from edgetune.errors import ModelError
    from edgetune.models import BUILTINS, builtin_gguf_path, cache_dir

    for model in BUILTINS.values():
        try:
            checks.append(Check(f"model {model.alias}", True, str(builtin_gguf_path(model))))
        except Exception as exc:
            checks.append(Check(f"model {model.alias}", False, "missing", str(exc).split(": ")[-1]))
    try:
        cache = cache_dir()
    except ModelError as exc:  # EDGETUNE_CACHE names a file: the rest of the report still stands
        checks.append(Check("cache", False, str(exc), "point EDGETUNE_CACHE at a directory"))
    else:
        probe = next((p for p in (cache, *cache.parents) if p.exists()), Path.home())
        free_gb = shutil.disk_usage(probe).free / 1e9
        if os.access(probe, os.W_OK):
            checks.append(Check("cache", True, f"{cache} ({free_gb:.1f} GB free)"))
        else:  # a filled one serves as it is; an empty one fails the first command that converts
            filled = all(_converted(model) for model in BUILTINS.values())
            checks.append(
                Check(
                    "cache",
                    filled,
                    f"{cache}: not writable" + (" (the built-in models are there: enough)" if filled else ""),
                    "" if filled else "point EDGETUNE_CACHE at a writable directory",
                )
            )
    free_here = shutil.disk_usage(Path.cwd()).free / 1e9
    checks.append(
        Check(
            "disk",
            free_here > 5,
            f"{free_here:.1f} GB free in {Path.cwd()}",
            "" if free_here > 5 else "free some space: a run with exports needs a few GB",
            needed=False,
        )
    )
    return checks


def _reinstall(names: list[str]) -> str:
    """The pip command that installs `names` at the versions edgetune's install allows (its
    package's requirements), and the checkout's way: a pip user has no Makefile."""
    specs = dict.fromkeys(names, "")
    try:
        from packaging.requirements import Requirement

        for line in importlib.metadata.requires("edgetune") or []:
            need = Requirement(line)
            if need.name in specs and need.marker is None:
                extras = f"[{','.join(sorted(need.extras))}]" if need.extras else ""
                specs[need.name] = f"{extras}{need.specifier}"
    except (ImportError, importlib.metadata.PackageNotFoundError):  # versions unknown: names only
        pass
    wanted = " ".join(f"'{name}{spec}'" if spec else name for name, spec in specs.items())
    # PyPI's default torch is its CUDA build: gigabytes a CPU machine cannot use
    cpu = (
        " --extra-index-url https://download.pytorch.org/whl/cpu (torch's CPU build)"
        if "torch" in specs
        else ""
    )
    return (
        f"pip install {wanted}{cpu}   (make install in edgetune's checkout: the versions it is tested with)"
    )


def _converted(model) -> bool:
    """Whether a built-in model's conversion is in the cache (none is made without writing there)."""
    from edgetune.models import builtin_cache_path

    try:
        return (builtin_cache_path(model) / "edgetune-source.sha256").is_file()
    except Exception:  # its package missing: said by the model's own line
        return False


def _dependencies() -> Check:
    """Every package edgetune's install names, at a version it allows (pyproject's pins): the
    rows above say a package is there, not that it is a version edgetune works with."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # packaging comes with transformers and pip: not worth a failure of its own
        return Check("dependencies", True, "versions not checked (no packaging module)")
    try:
        required = importlib.metadata.requires("edgetune") or []
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return Check("dependencies", True, "versions not checked (edgetune is not installed as a package)")
    problems, wrong, count = [], [], 0
    for line in required:
        need = Requirement(line)
        if need.marker is not None and not need.marker.evaluate({"extra": ""}):
            continue  # an extra's (dev)
        count += 1
        have = _version(need.name)
        if have is None:
            problems.append(f"{need.name} not installed")
        elif need.specifier and not need.specifier.contains(have, prereleases=True):
            problems.append(f"{need.name} {have} (edgetune needs {need.specifier})")
        else:
            continue
        wrong.append(need.name)
    if problems:
        return Check("dependencies", False, "; ".join(problems), _reinstall(wrong))
    return Check("dependencies", True, f"all {count} at the versions edgetune allows")
