"""A recipe file's YAML: safe_load, with a repeated key and bytes that are not UTF-8 refused by line,
and the line of every key, so a problem found later (a wrong type, a bad value) can name it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from edgetune.errors import ConfigError


class _RecipeLoader(yaml.SafeLoader):
    """safe_load, but a key given twice in one mapping is an error: plain YAML keeps the last, so
    a second `lr:` further down would silently win over the one the user is looking at."""


def _unique_keys(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[str] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *defaults`: keys it brings in may be overridden, that is what it is for
        key = loader.construct_object(key_node)
        if not isinstance(key, str):
            continue
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"{key!r} is given twice in one section", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_RecipeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_keys)


def _as_written(tag: str):
    """A number or date kept with its text where YAML 1.1 reads it as something else (`0123` is
    the octal 83, `1.10` is 1.1, `1:30` is 90): a string setting (model.revision, name, a system
    prompt) takes the text, any other the reading, as for --set (overrides.Given). `0012` is 12,
    as --set reads it: nobody means octal."""
    from edgetune.overrides import Given

    construct = yaml.SafeLoader.yaml_constructors[tag]

    def constructor(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
        value = construct(loader, node)
        if tag.endswith(":int") and re.fullmatch(r"[-+]?0[0-9]+", node.value):
            value = int(node.value, 10)
        if str(value) == node.value and not tag.endswith(":timestamp"):  # no setting takes a date
            return value
        return Given(node.value, value)

    return constructor


for _tag in ("int", "float", "timestamp"):
    _RecipeLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _as_written(f"tag:yaml.org,2002:{_tag}"))


def read_recipe_yaml(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The recipe's mapping, and the line of each key by dotted path (`train.lora.r`, and
    `export.gguf.quants[1]` for a list's items)."""
    try:
        data = path.read_bytes()
        loader = _RecipeLoader(data.decode("utf-8"))
        try:
            node = loader.get_single_node()
            raw = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            [f"not UTF-8 text (byte {data[exc.start]:#04x})"], source=f"{path}:{line}"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError([f"invalid YAML: {getattr(exc, 'problem', exc)}"], source=where) from None
    except OSError as exc:
        raise ConfigError([f"cannot read recipe: {exc.strerror}"], source=str(path)) from None
    except RecursionError:
        raise ConfigError(["invalid YAML: nested too deeply"], source=str(path)) from None
    if raw is None:
        return {}, {}
    if not isinstance(raw, dict):
        raise ConfigError(["the top level must be a mapping of sections"], source=str(path))
    try:
        values = _expanded_size(node, {})
    except RecursionError:
        raise ConfigError(["invalid YAML: nested too deeply"], source=str(path)) from None
    if values > MAX_EXPANDED:  # aliases of aliases: a "billion laughs"
        raise ConfigError(
            [f"its anchors and aliases expand to {values:,} values (at most {MAX_EXPANDED:,})"],
            source=str(path),
        )
    lines: dict[str, int] = {}
    _key_lines(node, "", lines)
    return raw, lines


MAX_EXPANDED = 100_000  # a recipe has about a hundred settings


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """The number of nodes `node` stands for once every alias is read out (each counted where it
    is used), counted over the shared graph: a bomb is measured without being expanded."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = 1  # a node holding itself (a recursive alias) counts once
    children = node.value if isinstance(node, yaml.SequenceNode) else []
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    sizes[id(node)] = min(MAX_EXPANDED + 1, 1 + sum(_expanded_size(child, sizes) for child in children))
    return sizes[id(node)]


def _key_lines(
    node: yaml.Node, prefix: str, lines: dict[str, int], seen: frozenset[int] = frozenset()
) -> None:
    if id(node) in seen:  # an alias of a node that holds itself
        return
    seen = seen | {id(node)}
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[f"{prefix}[{i}]"] = item.start_mark.line + 1
            _key_lines(item, f"{prefix}[{i}]", lines, seen)
    if not isinstance(node, yaml.MappingNode):
        return
    merged = [value for key, value in node.value if key.tag == "tag:yaml.org,2002:merge"]
    for value in merged:  # `<<: *defaults` first: a key given here wins over the one it brings
        for each in value.value if isinstance(value, yaml.SequenceNode) else [value]:
            _key_lines(each, prefix, lines, seen)
    for key, value in node.value:
        if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
            path = f"{prefix}.{key.value}" if prefix else key.value
            lines[path] = key.start_mark.line + 1
            _key_lines(value, path, lines, seen)


def with_lines(problems: list[str], lines: dict[str, int], path: Path) -> tuple[list[str], str]:
    """(problems, source) naming the recipe file's line of each problem's key: `recipe.yaml:12` for
    one problem, `line 12: ` in front of each of several. A problem --set caused has no line."""

    def line_of(problem: str) -> int | None:
        if problem.endswith(" (from --set)"):
            return None
        key = problem.split(":")[0]
        return lines.get(key) or lines.get(re.sub(r"\[\d+\]$", "", key))

    found = [line_of(p) for p in problems]
    if len(problems) == 1:
        return problems, f"{path}:{found[0]}" if found[0] else str(path)
    return [f"line {n}: {p}" if n else p for p, n in zip(problems, found)], str(path)


def name_from_file(path: Path) -> str:
    """A recipe file's stem as a run name (what `name` allows; "custom" where nothing is left). A
    file called recipe.yaml (one folder per experiment) is named by its folder."""
    stem = path.resolve().parent.name if path.stem.lower() == "recipe" else path.stem
    name = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "-", stem)).lstrip("._-")[:100]
    return (
        name
        if name and name.lower() not in ("latest", "export") and not name.lower().endswith(".previous")
        else "custom"
    )


def _made_from(run_dir: Path) -> str | None:
    """The recipe file a run directory's recipe.yaml says it was resolved from, or None."""
    try:
        first = (run_dir / "recipe.yaml").read_text(encoding="utf-8").split("\n", 1)[0]
    except (OSError, UnicodeDecodeError):
        return None
    made_from = first.removeprefix("# resolved recipe (from ").removesuffix(")")
    return made_from if made_from != first else None


def _named_as_before(runs: Path, given, name: str, same) -> Path | None:
    """A name YAML 1.1 reads as a number (`1.10`, `007`, `12:30`) named its run by that number up
    to 2026-12-07 (runs/1.1): an upgrade goes on in this file's run there rather than start over."""
    if str(given) != name:  # --set name=... chose another run
        return None
    legacy = yaml.safe_load(name)
    if isinstance(legacy, str) or legacy is None or str(legacy) == name or (runs / name).exists():
        return None
    before = runs / str(legacy)
    return before if same(_made_from(before)) else None


def unnamed_run_dir(runs: Path, source: str | None, name: str) -> Path | None:
    """Where `edgetune run` works for a recipe file with no `name` (None for a named one): runs/<name>
    (its name from the file); runs/custom where it holds the run of this file made before such a
    recipe was named by its file (edgetune up to 2026-12-06), so an upgrade goes on there. An
    InputError where runs/<name> holds another file's run: two config.yaml files in two folders
    would set each other's run aside and retrain forever."""
    try:
        raw, _ = read_recipe_yaml(Path(source)) if source else ({"name": None}, [])
    except (OSError, ConfigError):
        return None

    def same(made_from: str | None) -> bool:
        return made_from is not None and Path(made_from).resolve() == Path(str(source)).resolve()

    if "name" in raw:
        return _named_as_before(runs, raw["name"], name, same)

    own = runs / name
    if (made_from := _made_from(own)) is not None and not same(made_from):
        raise ConfigError(
            [
                f"name: not given, so this recipe would run in {own}, which holds the run of {made_from}; "
                "give it a name (or run it with --run-dir)"
            ],
            str(source),
        )
    if not own.exists() and name != "custom" and same(_made_from(runs / "custom")):
        return runs / "custom"
    return own
