"""`--set section.key=value` overrides: parsed as YAML scalars, merged into a recipe's raw mapping,
and a problem they caused blamed on them rather than on the recipe file."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import yaml

from edgetune.errors import ConfigError


class Given(str):
    """A --set value whose YAML reading is not its text (`0123` is the octal 83, `12:30` the base-60
    750, `1.10` is 1.1, ` #v2` a comment, `No` is false, `Answer: yes` a mapping, `2024-01-01` a
    date): the text as given, for a string setting, with `reading` for any other."""

    reading: Any

    def __new__(cls, text: str, reading: Any) -> Given:
        given = super().__new__(cls, text)
        given.reading = reading
        return given

    def __reduce__(self):  # copy.deepcopy of a recipe's mapping
        return (Given, (str(self), self.reading))


class Replacing(dict):
    """A mapping --set gives whole (`bench.gates.min_retention={}`): it replaces the recipe's, where
    the mappings a dotted key walks through merge into it."""


YAML_NULLS = ("", "~", "null", "Null", "NULL")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=1e-4` -> (["train", "lr"], 1e-4). The value is read as a YAML scalar."""
    if "=" not in text:
        raise ConfigError([f"--set {text}: expected KEY=VALUE, e.g. train.lr=1e-4"])
    key, _, raw = text.partition("=")
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError([f"--set {text}: bad key {key!r}"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    text = raw.strip()
    if re.fullmatch(r"[-+]?0[0-9]+", text):  # YAML 1.1 reads 0012 as octal 10; nobody means that
        value = int(text, 10)
    # YAML's reading is kept whole where it is the text itself, or where the text is YAML on purpose:
    # quoted, a flow list or mapping, or a null; any other reading may be a string setting's text
    # (`# Role: reply in JSON` reads as a comment, so as null)
    if value != text and text[:1] not in ("'", '"', "[", "{") and text not in YAML_NULLS:
        value = Given(text, value)
    return parts, Replacing(value) if isinstance(value, dict) else value


def override_list(overrides: Iterable[str] | None) -> list[str]:
    """--set overrides as a list. One str is refused, not read as its characters ("--set t: expected
    KEY=VALUE"), nor taken as one override: it may hold several ("a=1 b=2", or "a=1,b=2" where a
    comma also joins a list value), and guessing which could set a wrong value."""
    if isinstance(overrides, (str, bytes)):
        raise ConfigError(
            [
                f"overrides: a list of KEY=VALUE strings, not one string: pass [{overrides!r}], not {overrides!r}"
            ]
        )
    return list(overrides or [])


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return raw


def blame_overrides(problems: list[str], overrides: list[str], in_file: dict[str, Any]) -> list[str]:
    """A problem in a key some --set gave says so: the recipe file named in front of it is not to
    blame. A problem's key is the --set key, one inside it, or one that holds it and that the file
    does not have as a mapping (an unknown section a --set made, a number it made a mapping)."""
    keys = [".".join(parse_override(text)[0]) for text in overrides]

    def a_mapping_in_the_file(key: str) -> bool:  # `train.lr.x=1` made the file's lr a mapping
        node: Any = in_file
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return isinstance(node, dict)

    def from_set(key: str, given: str) -> bool:
        key = re.sub(r"\[\d+\]", "", key)  # bench.devices[1]: an item of the list the --set gave
        return (
            key == given
            or key.startswith(given + ".")
            or (given.startswith(key + ".") and not a_mapping_in_the_file(key))
        )

    def mentioned(problem: str) -> list[str]:  # a check across keys: another key the --set gave
        rest = problem.split(":", 1)[-1]
        return [k for k in dict.fromkeys(keys) if re.search(rf"(?<![\w.]){re.escape(k)}(?![\w])", rest)]

    blamed = []
    for p in problems:
        if any(from_set(p.split(":")[0], k) for k in keys):
            blamed.append(p + " (from --set)")
        elif also := mentioned(p):
            blamed.append(p + f" (with --set {', '.join(also)})")
        else:
            blamed.append(p)
    return blamed
