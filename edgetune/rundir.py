"""Run directories: layout, the runs/latest pointer, manifests, hashing and atomic writes.

A run directory holds recipe.yaml (resolved), manifest.json, adapter/, checkpoints/, merged/,
export/ and bench/. Every file a later stage or tool reads is written atomically (temporary file
in the same directory, fsync, rename), so a crash leaves the previous version, never half a file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from edgetune.config import deep_merge
from edgetune.errors import InputError, writing
from edgetune.pathnames import refuse_unusable
from edgetune.runlock import run_lock  # noqa: F401  (where the stages import it from)

RUNS_DIR = Path("runs")
LATEST = "latest"
MANIFEST = "manifest.json"
RECIPE_FILE = "recipe.yaml"


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@functools.cache
def _umask() -> int:
    """The process's umask: Linux says it in /proc; elsewhere os.umask reads it only by setting it
    (for a moment, which another thread creating a file could see), so it is read once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_modes(root: Path, replacing: Path | None = None) -> None:
    """Files and folders under `root` as the umask would have made them: mkstemp, mkdtemp and
    safetensors' save_file make them private (0600/0700), and a rename keeps that. With
    `replacing`, the folder `root` will replace, each takes the mode of the one it replaces there
    (mode_for: a shipped folder the user made private stays private)."""
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            there = replacing / path.relative_to(root) if replacing is not None else None
            path.chmod(mode_for(there, path.is_dir()))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_files({path: data})


def atomic_write_files(files: dict[Path, bytes]) -> None:
    """Each file written whole beside its final name first, then all renamed into place: a write
    that fails (a full disk) leaves every one as it was, so files that must agree (a report's
    JSON, markdown and plot) never mix two runs."""
    staged: dict[Path, str] = {}
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, staged[path] = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            with writing(path), os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(staged[path], mode_for(path))  # by path: Windows has os.fchmod from 3.13 only
        for path, tmp in staged.items():
            os.replace(tmp, path)
    except BaseException:
        for tmp in staged.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise


def mode_for(path: Path | None, directory: bool = False) -> int:
    """The mode a file (or folder) written in place of `path` gets: the one `path` has, where it
    is one of that kind (a user's chmod 600 on a manifest outlives the next stage, as it outlives
    an editor's save or `sed -i`), else the umask's. mkstemp makes it 0600, which a server reading
    the export as another user cannot read. Permissions only: no setuid or sticky bits."""
    with contextlib.suppress(OSError):  # none there: the umask's
        there = os.stat(path) if path is not None else None
        if there is not None and stat.S_ISDIR(there.st_mode) == directory:
            return there.st_mode & 0o777
    return (0o777 if directory else 0o666) & ~_umask()


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json_text(data))


def json_text(data: Any) -> str:
    """`data` as edgetune writes JSON files: strict (edgetune/strict_json.py: a NaN or infinity is
    written as null), indented, keys in their order."""
    from edgetune import strict_json

    return strict_json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a staging directory beside `target`; on success it replaces `target` in one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        with writing(target):
            yield staging
            give_modes(staging, target)  # a server running as another user reads the shipped files
            fsync_tree(staging)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            try:
                os.replace(staging, target)
            except BaseException:  # (Ctrl-C between the two renames) the old one back in its place
                if not target.exists():
                    os.replace(old, target)
                raise
            # renamed before it is removed: a removal killed midway is never taken for the old one
            doomed = target.with_name(f".{target.name}.removing-{os.getpid()}")
            os.replace(old, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def fsync_file(path: Path) -> None:
    """Make what was written to `path` durable (after writes that were only flushed). Opened for
    writing where it may be: Windows flushes a file only through a handle that can write it (an
    fsync of one opened read-only fails with EBADF), where POSIX takes any descriptor."""
    fd = os.open(path, os.O_RDWR if os.access(path, os.W_OK) else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            fsync_file(path)


def restore_replaced(target: Path) -> None:
    """An atomic_dir(target) killed between its two renames had moved the old `target` aside
    (.name.old-PID) and not yet put the new one in: the old one goes back, not away."""
    if target.exists() or target.is_symlink():
        return
    aside = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if aside:
        os.replace(aside[-1], target)


def remove_stale_staging(target: Path) -> None:
    """What a killed atomic_dir(target) left beside it: its staging folder, and the replaced one
    it had not yet removed, or put back where it had not been replaced (only ever called under the
    lock of the stage that writes `target`)."""
    restore_replaced(target)
    remove_paths(
        p
        for pattern in (f".{target.name}.*.tmp", f".{target.name}.old-*", f".{target.name}.removing-*")
        for p in target.parent.glob(pattern)
    )


def remove_paths(paths: Iterable[Path]) -> list[Path]:
    """Remove each file, folder or link (a link itself, never what it points at); returns them."""
    removed = list(paths)
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed


def clean_stale_temporaries(root: Path) -> list[Path]:
    """Remove leftovers of interrupted atomic writes (".name.*.tmp" files and directories)."""
    return remove_paths(list(root.rglob(".*.tmp"))) if root.is_dir() else []


_file_digests: dict[tuple, str] = {}
_KEPT_DIGESTS = 4096  # a service exporting all day keeps the latest, not every file it ever read


def sha256_file(path: Path) -> str:
    """A file's sha256, read once per process while the file stays as it was: `edgetune run` on a
    local base hashes its weights for the pipeline's fingerprint and again for tune's manifest.
    The key holds the inode's change time, which every write (and every utime) moves."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key in _file_digests:
        return _file_digests[key]
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    while len(_file_digests) >= _KEPT_DIGESTS:
        _file_digests.pop(next(iter(_file_digests), None), None)  # the oldest (another thread's pop)
    digest = _file_digests[key] = h.hexdigest()
    return digest


MODEL_FILES = ("*.json", "*.safetensors", "*.model", "*.jinja")


def tree_files(root: Path, patterns: tuple[str, ...] = MODEL_FILES) -> list[Path]:
    return sorted({p for pattern in patterns for p in root.glob(pattern) if p.is_file()})


def sha256_tree(root: Path, patterns: tuple[str, ...] = MODEL_FILES) -> str:
    """A hash over a model directory's files (names and contents), stable across machines."""
    return sha256_files(root, tree_files(root, patterns))


def sha256_files(root: Path, files: list[Path]) -> str:
    """A hash over `files` under `root`: their names (paths below root) and contents."""
    h = hashlib.sha256()
    for path in files:  # a top-level file's path below root is its name, as sha256_tree has always hashed
        h.update(str(path.relative_to(root)).encode() + b"\0" + sha256_file(path).encode() + b"\n")
    return h.hexdigest()


def file_digests(root: Path, leave_out: Callable[[Path], bool]) -> dict[str, str]:
    """sha256 of each file below `root` (by its path below it) but those `leave_out` names, and
    hidden ones (a writer's temporary files), in path order."""
    return {
        str(p.relative_to(root)): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".") and not leave_out(p)
    }


def changed_names(known: dict[str, str], now: dict[str, str]) -> list[str]:
    """The names added, removed or of another digest between two file_digests."""
    return sorted(name for name in known.keys() | now.keys() if known.get(name) != now.get(name))


def new_run_dir(name: str, runs_dir: Path = RUNS_DIR) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = runs_dir / f"{name}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = runs_dir / f"{name}-{stamp}-{n}"
    path.mkdir(parents=True)
    return path


@contextlib.contextmanager
def discarded_on_failure(run_dir: Path, fresh: bool) -> Iterator[None]:
    """A run directory this command just made goes again if the command fails before it holds
    anything worth keeping (data that does not parse, a model that does not load): no empty run
    litters runs/, and runs/latest keeps naming the last real one."""
    try:
        yield
    except BaseException:
        if fresh:  # its lock file goes when the lock is let go (run_lock)
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def refuse_unwritable(folder: Path, why: str) -> None:
    """Write (and remove) a file in `folder`, or in the folder it will be made in, before work
    whose result goes there: an unwritable or read-only run found at the end (bench: after
    minutes of measuring) loses all of that work. Nothing is left behind."""
    where = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    try:
        if not where.is_dir():
            raise NotADirectoryError(20, "not a directory")
        with tempfile.NamedTemporaryFile(dir=where, prefix=".edgetune-probe-"):
            pass
    except OSError as exc:
        from edgetune.errors import InputError

        raise InputError(f"{folder}: cannot write there ({exc.strerror or exc}); {why}") from None


def file_in_the_way(path: Path | str) -> Path | None:
    """The nearest existing path at or above `path` when it is a file, not a directory: making
    `path` (mkdir with parents) would fail there, after whatever work came first."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    return existing if existing is not None and not existing.is_dir() else None


def is_run_dir(path: Path) -> bool:
    """Whether a directory holds an edgetune run (its recipe or manifest), not somebody's files."""
    return (path / RECIPE_FILE).is_file() or (path / MANIFEST).is_file()


def refuse_foreign_dir(run_dir: Path) -> None:
    """A --run-dir that exists must be empty or an edgetune run: a run writes, renames and
    replaces what it finds there, and a project folder given by mistake must not be touched."""
    refuse_unusable(run_dir, "--run-dir")
    if blocked := file_in_the_way(run_dir):
        raise InputError(f"{blocked}: not a directory; --run-dir names the run's directory")
    if not run_dir.exists():
        return
    # dotfiles (.DS_Store, a temporary edgetune is writing) say nothing about whose folder it is
    if any(not p.name.startswith(".") for p in run_dir.iterdir()) and not is_run_dir(run_dir):
        raise InputError(
            f"{run_dir}: holds files but no edgetune run ({RECIPE_FILE} or {MANIFEST}); "
            "give a new or empty directory as --run-dir"
        )


def point_latest(run_dir: Path) -> bool:
    """runs/latest -> run_dir, replaced atomically, in the runs/ folder where a command given no
    RUN_DIR looks (resolve_run_dir): relative for a run under it, absolute for a --run-dir elsewhere
    (whose own parent gets nothing). False, and nothing written, where that cannot be done: no
    runs/ folder here (one is not made for a run kept elsewhere), one that cannot be written, or a
    `latest` in it that is no symlink (somebody's file)."""
    link = RUNS_DIR / LATEST
    if not RUNS_DIR.is_dir() or (link.exists() and not link.is_symlink()):
        return False
    target = run_dir.resolve()
    runs = RUNS_DIR.resolve()
    name = str(target.relative_to(runs)) if target.is_relative_to(runs) else str(target)
    tmp = RUNS_DIR / f".{LATEST}.{os.getpid()}.tmp"
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(name, tmp)
        os.replace(tmp, link)
    except OSError:  # a read-only folder, or one that is not ours to write in
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
    return True


# what a peft adapter folder given where a run is expected is told
ADAPTER_HINT = (
    ", but a peft adapter: to merge and export it, make a run folder holding it as adapter/ and a "
    "recipe.yaml whose model.base is the model it was trained on"
)


def resolve_run_dir(run_dir: Path | str | None, given_as: str = "RUN_DIR") -> Path:
    """A RUN_DIR argument (a Path or a str from a program calling merge, bench...), or runs/latest
    when none is given. `given_as`: the argument or option an error names."""
    if run_dir is None:
        latest = RUNS_DIR / LATEST
        if latest.is_symlink() and not latest.exists():
            raise InputError(
                f"no run given and {latest} points to {os.readlink(latest)}, which is gone: name a run directory"
            )
        if not latest.exists():
            raise InputError(
                f"no run given and {latest} does not exist: run `edgetune tune` first or name a run directory"
            )
        return latest.resolve()
    run_dir = Path(run_dir)
    refuse_unusable(run_dir, given_as)  # (exists() raises where a name is too long)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"{run_dir}: a file, not a run directory")
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: run directory not found")
    return run_dir.resolve()


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MANIFEST
    if not path.is_file():
        return {}
    try:
        from edgetune import strict_json

        manifest = strict_json.restore(json.loads(path.read_bytes().decode("utf-8")))
        problem = _manifest_problem(manifest)
    except UnicodeDecodeError:
        problem = "not UTF-8 text"
    except json.JSONDecodeError as exc:
        problem = f"{exc.msg} at line {exc.lineno}"
    if problem:
        raise InputError(
            f"{path}: corrupt manifest ({problem}); move it aside to start the run's record afresh"
        )
    return manifest


# the sections every reader looks into: each a mapping, and each stage's record a mapping too
MANIFEST_MAPPINGS = ("pipeline", "stages", "versions", "device", "recipe", "base_model", "data")


def _manifest_problem(manifest: Any) -> str | None:
    if not isinstance(manifest, dict):
        return "the top level is not an object"
    for key in MANIFEST_MAPPINGS:
        if key in manifest and not isinstance(manifest[key], dict):
            return f"{key} is not an object"
    for name, stage in manifest.get("stages", {}).items():
        if not isinstance(stage, dict):
            return f"stages.{name} is not an object"
    return None


def update_manifest(run_dir: Path, **sections: Any) -> dict[str, Any]:
    """Merge sections into manifest.json (nested mappings merge; other values replace), atomically."""
    manifest = read_manifest(run_dir)
    deep_merge(manifest, sections)
    atomic_write_json(run_dir / MANIFEST, manifest)
    return manifest


def weights_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))


def low_space_warning(directory: Path, needed: int, work: str) -> str | None:
    """A warning when `directory`'s file system has less free space than `work` will need."""
    probe = Path(directory)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free >= needed:
        return None
    return f"{probe}: {_size(free)} free, {work} needs about {_size(needed)}; it may fail for lack of space"


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"
