"""bench/gpu_wheels.py: wheels packed into carry-sized folders, reassembled and installed with pip
there; a folder that did not arrive costs the steps that need it, not the whole check."""

import base64
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_wheels.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_wheels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_wheel(folder: Path, name: str, files: dict[str, bytes]) -> Path:
    """A real (pure-Python) wheel that pip installs."""
    dist = f"{name}-1.0.dist-info"
    files = {
        **files,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    rows = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{path},sha256={digest},{len(data)}")
    files[f"{dist}/RECORD"] = ("\n".join([*rows, f"{dist}/RECORD,,"]) + "\n").encode()
    wheel = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as z:  # stored: the sizes are what we set
        for path, data in files.items():
            z.writestr(path, data)
    return wheel


def install(gpu_dir: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "install",
            str(site),
            "--gpu-dir",
            str(gpu_dir),
            "--sources",
            f"{site}-src",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def imports(site: Path, module: str) -> bool:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-c", f"import {module}"], env=env).returncode == 0


@pytest.fixture
def packed(tmp_path):
    gpu_wheels = load_script()
    src = tmp_path / "src"
    src.mkdir()
    core = make_wheel(src, "corepkg", {"corepkg/__init__.py": b"VALUE = 1\n"})
    # larger than a folder: travels in parts (random bytes, so the zip cannot shrink it)
    model = make_wheel(
        src, "modelpkg", {"modelpkg/__init__.py": b"", "modelpkg/weights.bin": os.urandom(6000)}
    )
    small = make_wheel(src, "smallpkg", {"smallpkg/__init__.py": b""})
    source = src / "srcpkg-1.0.tar.gz"  # a source archive: reassembled for a build there, not installed
    source.write_bytes(os.urandom(3000))
    out = tmp_path / "gpu"
    folders = gpu_wheels.write_folders([core, model, small, source], {core.name}, 2500, out)
    return gpu_wheels, out, folders, {"core": core, "model": model, "source": source}


def test_folders_fit_the_limit_and_the_last_one_holds_the_essentials_and_the_manifest(packed):
    gpu_wheels, out, folders, wheels = packed
    assert folders >= 3  # 6 KB in 2.5 KB folders
    for n in range(1, folders + 1):
        payload = [p for p in (out / str(n)).iterdir() if p.name not in ("manifest.json", "CALLS.md")]
        assert sum(p.stat().st_size for p in payload) <= 2500
    last = out / str(folders)
    assert (last / wheels["core"].name).is_file() and (last / "manifest.json").is_file()
    parts = sorted(p.name for p in out.glob("*/modelpkg-*.part*"))
    assert len(parts) == -(-wheels["model"].stat().st_size // 2500)
    calls = (last / "CALLS.md").read_text()
    assert f'carry=[".gpu/{folders}"]' in calls and "--receive" in calls


def test_optional_wheels_travel_in_their_own_folders_just_before_the_last(tmp_path):
    gpu_wheels = load_script()
    src = tmp_path / "src"
    src.mkdir()
    core = make_wheel(src, "corepkg", {"corepkg/__init__.py": b""})
    model = make_wheel(src, "modelpkg", {"modelpkg/w.bin": os.urandom(4000)})
    gpu = make_wheel(src, "gpupkg", {"gpupkg/lib.bin": os.urandom(4000)})
    small = make_wheel(src, "smallpkg", {"smallpkg/__init__.py": b""})
    out = tmp_path / "gpu"
    folders = gpu_wheels.write_folders(
        [core, model, gpu, small], {core.name}, 2500, out, frozenset({gpu.name})
    )
    manifest = json.loads((out / str(folders) / "manifest.json").read_text())
    holding = {}
    for e in manifest["files"]:
        holding.setdefault(e["folder"], set()).add(e["wheel"])
    optional = sorted(n for n, names in holding.items() if gpu.name in names)
    # its folders hold nothing else and come right before the last, so that they can be left out
    assert all(holding[n] == {gpu.name} for n in optional)
    assert optional == list(range(folders - len(optional), folders)) and len(optional) == 2
    assert manifest["optional"] == [gpu.name]
    calls = (out / str(folders) / "CALLS.md").read_text()
    assert all(
        f'".gpu/{n}"] timeout_s=60 command: bash bench/gpu_check.sh --receive (optional' in calls
        for n in optional
    )
    assert calls.count("(optional") == len(optional)


def test_install_reassembles_verifies_and_installs_every_wheel(packed, tmp_path):
    gpu_wheels, out, folders, wheels = packed
    site = tmp_path / "site"
    proc = install(out, site)
    assert proc.returncode == 0, proc.stderr
    assert imports(site, "corepkg") and imports(site, "modelpkg") and imports(site, "smallpkg")
    assert (site / "modelpkg" / "weights.bin").stat().st_size == 6000
    assert not (site / "edgetune-missing-wheels.txt").exists()
    assert (tmp_path / "site-src" / "srcpkg-1.0.tar.gz").read_bytes() == wheels["source"].read_bytes()
    assert not list(site.glob("srcpkg*"))


def test_a_folder_that_did_not_arrive_leaves_the_rest_installed_and_says_what_is_missing(packed, tmp_path):
    gpu_wheels, out, folders, wheels = packed
    lost = next(p for p in out.glob("*/modelpkg-*.part*") if p.parent.name != str(folders))
    lost.unlink()
    site = tmp_path / "site"
    proc = install(out, site)
    assert proc.returncode == 0, proc.stderr
    assert imports(site, "corepkg") and not imports(site, "modelpkg")
    assert (site / "edgetune-missing-wheels.txt").read_text().split() == [wheels["model"].name]
    assert "did not arrive" in proc.stdout


def test_a_corrupted_part_is_not_installed(packed, tmp_path):
    gpu_wheels, out, folders, wheels = packed
    part = sorted(out.glob("*/modelpkg-*.part*"))[0]
    data = bytearray(part.read_bytes())
    data[-1] ^= 0xFF
    part.write_bytes(bytes(data))
    proc = install(out, tmp_path / "site")
    assert proc.returncode == 0 and "checksum differs" in proc.stderr
    assert not imports(tmp_path / "site", "modelpkg")


def test_without_the_essential_folder_install_refuses(packed, tmp_path):
    gpu_wheels, out, folders, wheels = packed
    (out / str(folders) / wheels["core"].name).unlink()
    proc = install(out, tmp_path / "site")
    assert proc.returncode == 2 and "corepkg" in proc.stderr


def test_bitsandbytes_keeps_only_the_libraries_a_cuda13_torch_loads(tmp_path):
    gpu_wheels = load_script()
    names = ["cpu", "cuda118", "cuda128", "cuda130", "cuda132", "rocm64", "xpu2025"]
    files = {f"bitsandbytes/libbitsandbytes_{n}.so": n.encode() for n in names}
    files["bitsandbytes/__init__.py"] = b""
    wheel = make_wheel(tmp_path, "bitsandbytes", files)
    (tmp_path / "out").mkdir()
    trimmed = gpu_wheels.trim_bitsandbytes(wheel, tmp_path / "out")
    with zipfile.ZipFile(trimmed) as z:
        kept = sorted(n for n in z.namelist() if n.endswith(".so"))
        record = z.read("bitsandbytes-1.0.dist-info/RECORD").decode()
    expected = [f"bitsandbytes/libbitsandbytes_{n}.so" for n in ("cpu", "cuda130", "cuda132")]
    assert kept == expected
    assert "cuda128" not in record and "rocm" not in record and "cuda130" in record
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(tmp_path / "site"),
            str(trimmed),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
