"""What each stage of `edgetune run` read, as one hash: a stage whose hash is unchanged is skipped.

tune hashes the model (a local base by its files' contents), the data and train sections and the
data files' bytes; merge the adapter's files; export the merged weights, the export section and
the data (importance matrix, parity prompts); bench the exported files and the bench section but
its gates. Today's fingerprints carry a version prefix; those an earlier edgetune recorded
(`legacy`: absolute data paths, no-op settings, a local base by its path, exported files by name)
are still recognised once, then replaced, so upgrading edgetune redoes no stage.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgetune.config import Recipe, is_local_base
from edgetune.rundir import atomic_write_json, read_manifest, sha256_file, sha256_files, sha256_tree

STAGES = ("data", "tune", "merge", "export", "bench")
VERSION = "2:"  # today's fingerprints start so; legacy ones are bare hex digests

# Recipe fields that joined a hashed section after runs had been fingerprinted, each with the value
# that does what edgetune did before the field existed. At that value a field stays out of its
# stage's hash, so upgrading edgetune does not make `edgetune run` retrain (or re-export) a run
# whose inputs did not change; at any other value it is hashed like the rest. A new field of a
# hashed section belongs here (tests/test_pipeline.py lists the fields hashed before it). A run's
# recipe.yaml leaves such a field out at that value too (run_recipe.dump_run_recipe), so the
# edgetune before it still reads the run.
ADDED_LATER: dict[str, Any] = {
    "export.parity_kl": {},
    "data.split_by": "position",
    "bench.gates.prompting_evidence": "measured",
    "bench.few_shot_similar": False,
}

# Settings out of today's fingerprints: the data files' paths (their bytes are hashed by split, so
# a project moved or checked out elsewhere is still up to date) and settings that cannot change
# what a stage makes.
UNHASHED = (
    "data.train",
    "data.valid",
    "data.test",
    "model.allow_pickle",
    "train.threads",
    "train.tensorboard",
)


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def hashed_settings(section: str, settings: Any, legacy: bool = False) -> dict[str, Any]:
    """A recipe section as its stage's fingerprint hashes it: every field but those of ADDED_LATER
    left at their earlier behaviour and (today) those UNHASHED, nested sections the same way."""
    out = {}
    for key, value in (asdict(settings) if not isinstance(settings, dict) else settings).items():
        path = f"{section}.{key}"
        if path in ADDED_LATER and value == ADDED_LATER[path] or (path in UNHASHED and not legacy):
            continue
        out[key] = hashed_settings(path, value, legacy) if isinstance(value, dict) else value
    return out


def data_files(recipe: Recipe) -> dict[str, str]:
    """Each data split's file hash (a missing file or a directory is a DataError naming it)."""
    from edgetune.data.files import dataset_kind

    paths = {k: Path(p) for k in ("train", "valid", "test") if (p := getattr(recipe.data, k))}
    for path in paths.values():
        dataset_kind(path)
    return {k: sha256_file(p) for k, p in paths.items()}


def export_files(run_dir: Path) -> list[Path]:
    from edgetune.export.layout import gguf_files, onnx_dirs

    export = run_dir / "export"
    onnx = [p for d in onnx_dirs(export / "onnx") for p in sorted(d.glob("model.onnx*"))]
    return gguf_files(export / "gguf") + onnx


def _base_files(path: Path) -> list[Path]:
    """Every file of a local base (weights of any kind, tokenizer, templates, code), not the
    hidden ones (a download tool's .cache/)."""
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts)
    )


def local_base(recipe: Recipe) -> Path | None:
    """model.base's folder when it names one on disk (not a built-in alias or a hub id)."""
    return Path(recipe.model.base).expanduser() if is_local_base(recipe.model.base) else None


def base_identity(recipe: Recipe, done: dict[str, Any]) -> str:
    """What model.base stands for in the tune fingerprint: a built-in alias or hub id by its name
    (with model.revision beside it), a local directory by its files' contents, so an edit in place
    retrains and a moved copy does not. Hashing takes seconds a GB: the hash is kept in the
    pipeline record `done` with the folder and its files' sizes and times, and taken again only
    when those change (the inode's change time too: a file replaced with its old size and mtime
    set back, as `cp -p`, `rsync -a` or an unpacked archive leaves it, is still a new file)."""
    from edgetune.models import BUILTINS

    name = recipe.model.base
    cached = done.get("base_model") if isinstance(done.get("base_model"), dict) else {}
    path = local_base(recipe)
    if name in BUILTINS:
        return name
    if path is None:  # a hub id; or a local base removed since: it held what the record says
        return cached["sha256"] if cached.get("name") == name and cached.get("sha256") else name
    files = _base_files(path)
    stat = _digest(
        str(path.resolve()),
        [
            (str(p.relative_to(path)), st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            for p in files
            if (st := p.stat())
        ],
    )
    if cached.get("stat") == stat and cached.get("sha256"):
        return cached["sha256"]
    digest = sha256_files(path, files)
    done["base_model"] = {"name": name, "stat": stat, "sha256": digest}
    return digest


def fingerprints(
    recipe: Recipe, run_dir: Path, done: dict[str, Any] | None = None, legacy: bool = False
) -> dict[str, Callable[[], str]]:
    """Each stage's fingerprint, computed when asked for (later ones hash files earlier stages
    write). `done`: the run's pipeline record, where a local base's hash is kept. `legacy`: as
    edgetune fingerprinted up to 2026-12-06."""
    data = _digest(hashed_settings("data", recipe.data, legacy), data_files(recipe))
    base = None if legacy else base_identity(recipe, {} if done is None else done)
    tune = tune_key(recipe, data, base)
    root = None if legacy else run_dir / "export"
    prefix = "" if legacy else VERSION

    def files() -> str:  # by path under export/: every ONNX variant's file is model.onnx
        return _digest(
            {str(p.relative_to(root) if root else p.name): sha256_file(p) for p in export_files(run_dir)}
        )

    bench_settings = hashed_settings("bench", recipe.bench, legacy)
    bench_settings.pop("gates")  # gates are not measurements: a skipped bench re-applies them

    def exported(fmt: str) -> str:  # one format's files: on the other format's settings they do not depend
        settings = hashed_settings("export", recipe.export, legacy)
        settings = {k: v for k, v in settings.items() if k not in ("formats", "gguf", "onnx") or k == fmt}
        merged = sha256_tree(run_dir / "merged")
        return prefix + _digest(fmt, merged, settings, data, recipe.bench.max_new_tokens)

    stages = {
        "data": lambda: prefix + data,
        "tune": lambda: prefix + tune,
        "merge": lambda: prefix + _digest(tune, sha256_tree(run_dir / "adapter")),
        "export": lambda: (
            prefix
            + _digest(
                sha256_tree(run_dir / "merged"),
                hashed_settings("export", recipe.export, legacy),
                data,
                recipe.bench.max_new_tokens,
            )
        ),
        "bench": lambda: prefix + _digest(files(), bench_settings),
    }
    if not legacy:  # within the export stage (since 2026-12-06): a format whose own inputs are unchanged
        stages |= {f"export.{fmt}": lambda fmt=fmt: exported(fmt) for fmt in ("gguf", "onnx")}
    return stages


def training_settings(recipe: Recipe) -> str:
    """What a tune's checkpoints were trained under, but for its data files' and base model's
    contents (checked on their own): a resume on other settings would mix two trainings."""
    model = hashed_settings("model", recipe.model)
    model.pop("base", None)
    return _digest(model, hashed_settings("train", recipe.train), hashed_settings("data", recipe.data))


def tune_key(recipe: Recipe, data: str, base: str | None) -> str:
    """`base`: the base model's identity (base_identity); None: as `legacy` fingerprints hashed it."""
    model = hashed_settings("model", recipe.model, legacy=base is None)
    if base is not None:
        model["base"] = base
    return _digest(data, model, hashed_settings("train", recipe.train, legacy=base is None))


class StageRecord:
    """The run's pipeline record (manifest.json's "pipeline"): each finished stage's fingerprint,
    the tune a run started ("tune_started", so an interrupted one resumes), and a local base's
    cached hash."""

    def __init__(self, recipe: Recipe, run_dir: Path):
        self.recipe, self.run_dir = recipe, run_dir
        manifest = run_dir / "manifest.json"
        self.done: dict[str, Any] = read_manifest(run_dir).get("pipeline", {}) if manifest.is_file() else {}
        self._as_read = json.dumps(self.done, sort_keys=True)
        self.today = fingerprints(recipe, run_dir, self.done)
        self._legacy: dict[str, Callable[[], str]] | None = None

    def legacy(self, stage: str) -> str:
        if self._legacy is None:  # only for a record an earlier edgetune wrote
            self._legacy = fingerprints(self.recipe, self.run_dir, legacy=True)
        return self._legacy[stage]()

    def matches(self, stage: str) -> bool:
        """Whether the stage last finished on these inputs: today's fingerprint, or an earlier
        edgetune's of the same inputs (then today's is recorded in its place)."""
        was = self.done.get(stage)
        if not isinstance(was, str):
            return False
        if was.startswith(VERSION):
            return was == self.today[stage]()
        if was != self.legacy(stage) or (stage == "tune" and not self._base_as_tuned()):
            return False
        self.record(stage)
        return True

    def _base_as_tuned(self) -> bool:
        """A legacy tune fingerprint held a local base's path only: its files must still be the
        ones the tune recorded in the manifest (an edit in place before the upgrade is not adopted)."""
        path = local_base(self.recipe)
        if path is None:
            return True
        tuned = read_manifest(self.run_dir).get("base_model", {}).get("sha256")
        return tuned is None or tuned == sha256_tree(path)

    def tune_started_here(self) -> bool:
        """Whether the tune the run holds was started on these inputs (it resumes)."""
        was = self.done.get("tune_started")
        if not isinstance(was, str):
            return False
        if was.startswith(VERSION):
            return was == self.today["tune"]()
        return was == self.legacy("tune") and self._base_as_tuned()

    def start_tune(self) -> None:
        self.done["tune_started"] = self.today["tune"]()
        self.save()

    def record(self, stage: str) -> None:
        self.done[stage] = self.today[stage]()
        self.save()

    def forget_after(self, stage: str) -> None:
        """Everything after a stage that ran is stale, whatever its fingerprint said."""
        for later in STAGES[STAGES.index(stage) + 1 :]:
            for key in [k for k in self.done if k == later or k.startswith(later + ".")]:
                self.done.pop(key)

    def save(self) -> None:
        """Replace (not merge) the manifest's pipeline record."""
        manifest = read_manifest(self.run_dir)
        manifest["pipeline"] = dict(self.done)
        atomic_write_json(self.run_dir / "manifest.json", manifest)
        self._as_read = json.dumps(self.done, sort_keys=True)

    def save_if_changed(self) -> None:
        """A local base's hash taken again (its files' times changed, its bytes did not)."""
        if (
            json.dumps(self.done, sort_keys=True) != self._as_read
            and (self.run_dir / "manifest.json").is_file()
        ):
            self.save()
