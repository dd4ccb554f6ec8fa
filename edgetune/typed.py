"""Plain data (parsed YAML) -> typed dataclasses, collecting every problem with its key path.

Supports the field types recipes use: dataclasses, Optional/Union, Literal, list, dict, bool,
int, float, str. A value that fails to convert is reported and left at the field's default.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    origin = get_origin(tp)
    if hasattr(value, "reading") and tp is not str and origin not in (Union, types.UnionType):
        value = value.reading  # a --set value (overrides.Given): its text is for string settings only
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path, problems)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if type(None) in args and (value is None or (value == "" and str not in args)):
            return None  # `--set train.threads=`: back to the default, as a null in YAML
        for arg in args:  # first alternative that converts without problems wins
            trial: list[str] = []
            result = _convert(value, arg, path, trial)
            if not trial:
                return result
        problems.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return None
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(value, str) and value.lower() in choices:
            return value.lower()
        problems.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return None
    if origin is list:
        if isinstance(value, str) and "," in value:  # --set export.formats=gguf,onnx
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif not isinstance(value, list):
            value = [value]
        items = [_checked(v, get_args(tp)[0], f"{path}[{i}]", problems) for i, v in enumerate(value)]
        return [converted for converted, ok in items if ok]  # a bad entry is reported, not kept
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {value!r}")
            return {}
        _, vt = get_args(tp)
        entries = {str(k): _checked(v, vt, f"{path}.{k}", problems) for k, v in value.items()}
        return {
            k: converted for k, (converted, ok) in entries.items() if ok
        }  # a bad entry is reported, not kept
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{path}: expected true/false, got {value!r}")
        return None
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):  # YAML 1.1 reads `1e3` as a string, where a float field takes it
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        problems.append(f"{path}: expected an integer, got {value!r}")
        return None
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "2e-4" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None and math.isfinite(number):
            return number
        what = "a finite number" if number is not None else "a number"  # nan or .inf passes every < test
        problems.append(f"{path}: expected {what}, got {value!r}")
        return None
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        problems.append(f"{path}: expected a string, got {value!r}")
        return None
    if tp is type(None):
        if value is None:
            return None
        problems.append(f"{path}: expected null, got {value!r}")
        return None
    raise TypeError(f"unsupported recipe field type {tp!r} at {path}")


def _checked(value: Any, tp: Any, path: str, problems: list[str]) -> tuple[Any, bool]:
    """(converted value, whether it converted without a problem)."""
    before = len(problems)
    converted = _convert(value, tp, path, problems)
    return converted, len(problems) == before


def build(cls: type, raw: Any, path: str, problems: list[str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{path or 'recipe'}: expected a mapping, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in raw.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in fields:
            known = ", ".join(fields)
            problems.append(f"{key_path}: unknown key (known here: {known})")
            continue
        kwargs[key] = _convert(value, hints[key], key_path, problems)
    kwargs = {k: v for k, v in kwargs.items() if v is not None or _allows_none(hints[k])}
    return cls(**kwargs)


def _allows_none(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def at_least(section: str, obj: Any, minimum: float, *names: str) -> list[str]:
    """`section.name: must be >= minimum` for each named field below it (None is unset, not low)."""
    return [
        f"{section}.{name}: must be >= {minimum}, got {value}"
        for name in names
        if (value := getattr(obj, name)) is not None and value < minimum
    ]


def not_empty(section: str, obj: Any, *names: str) -> list[str]:
    """`section.name: must not be empty` for each named list or string field that is."""
    return [f"{section}.{name}: must not be empty" for name in names if not getattr(obj, name)]


def positive_by_type(path: str, values: dict[str, float], known: tuple[str, ...]) -> list[str]:
    """A mapping of export types to numbers (export.parity_kl): each type one edgetune writes, each
    number finite and > 0."""
    return [
        f"{path}.{name}: "
        + (
            f"must be > 0, got {value}"
            if name.lower() in known
            else f"no such type; types: {', '.join(known)}"
        )
        for name, value in values.items()
        if name.lower() not in known or not 0 < value < float("inf")
    ]
