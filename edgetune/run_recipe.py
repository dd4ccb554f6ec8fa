"""A run's own recipe.yaml: the resolved recipe, written with the files it names in its project
relative to the run, and read back from wherever the run is now."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from edgetune.config import Recipe, is_local_base, load_recipe
from edgetune.rundir import RECIPE_FILE, read_manifest


def dump_run_recipe(recipe: Recipe, run_dir: Path) -> str:
    """The run's recipe.yaml: its data files and a local base model named relative to the run where
    they lie in its project (the folder that holds runs/, for a run in runs/<name>), so the run's
    own commands (merge, export, bench, tune --resume) find them in a project moved or checked out
    elsewhere, and a base named `model` is not read from whatever folder a later command starts in.
    Other paths stay absolute. The manifest keeps the folder it was written in (recipe.written_in):
    a run copied away alone finds its files where they were (load_run_recipe)."""
    here = run_dir.resolve()
    project = here.parent.parent if here.parent.name == "runs" else None  # a --run-dir elsewhere: none
    if project == Path(here.anchor):  # /runs/x: no project folder to move
        project = None

    def portable(path: str) -> str:
        target = Path(path).expanduser().resolve()
        if project is None or not target.is_relative_to(project):
            return str(target)
        relative = os.path.relpath(target, here)
        return relative if relative.startswith(".") else f"./{relative}"

    raw = recipe.to_dict()
    _leave_out_added_later(raw)
    for key in ("train", "valid", "test"):
        if raw["data"][key]:
            raw["data"][key] = portable(raw["data"][key])
    if is_local_base(raw["model"]["base"]):
        raw["model"]["base"] = portable(raw["model"]["base"])
    header = f"# resolved recipe (from {recipe.source})\n"
    if project is not None:
        header += "# relative paths are relative to this run's folder (../.. is its project)\n"
    return header + yaml.safe_dump(raw, sort_keys=False)


def _leave_out_added_later(raw: dict) -> None:
    """Recipe fields newer than some edgetune releases, where they hold the value that does what
    those releases did, are not written: an older edgetune refuses a recipe.yaml with a key it does
    not know, and would then refuse every run a newer one only looked at."""
    from edgetune.fingerprints import ADDED_LATER

    for path, earlier in ADDED_LATER.items():
        *sections, key = path.split(".")
        where = raw
        for section in sections:
            where = where.get(section) if isinstance(where, dict) else None
        if isinstance(where, dict) and key in where and where[key] == earlier:
            del where[key]


def load_run_recipe(run_dir: Path) -> Recipe:
    """The run's recipe, its relative paths resolved against the run; one that names no file there
    (the run was copied away, its project's files left where they were) against the folder it was
    written in."""
    recipe = load_recipe(str(run_dir / RECIPE_FILE))
    written_in = read_manifest(run_dir).get("recipe", {}).get("written_in")
    was = Path(written_in) if isinstance(written_in, str) and written_in else None
    here = run_dir.resolve()
    if was is None or was == here:
        return recipe

    def found(name: str | None) -> str | None:
        if not name or not Path(name).is_absolute() or Path(name).exists():
            return name
        before = (was / os.path.relpath(name, here)).resolve()
        return str(before) if before.exists() else name

    for key in ("train", "valid", "test"):
        setattr(recipe.data, key, found(getattr(recipe.data, key)))
    recipe.model.base = found(recipe.model.base)
    return recipe
