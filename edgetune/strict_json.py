"""JSON that strict readers accept. Python writes a float that is not finite as NaN or Infinity,
which jq, JavaScript's JSON.parse and Go refuse: a report holding one KL of an overflowing export
could not be read by any tool but ours. Such a value is written as null, with its kind beside it
under "<key>_not_finite" ("nan", "inf", "-inf"; for a list, {index: kind}), and `restore` puts
the float back for edgetune's own readers."""

from __future__ import annotations

import json
import math
from typing import Any

MARK = "_not_finite"


def _kind(value: Any) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return None


def _marker(value: Any) -> Any:
    """What to keep beside a value written as (or holding) null: None when it is all finite."""
    if isinstance(value, (list, tuple)):
        kinds = {str(i): k for i, v in enumerate(value) if (k := _kind(v))}
        return kinds or None
    return _kind(value)


def strict(value: Any) -> Any:
    """`value` with every non-finite float replaced by null (and marked where it sat in a dict)."""
    if _kind(value):
        return None
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            out[key] = strict(item)
            if isinstance(key, str) and (mark := _marker(item)) is not None:
                out[key + MARK] = mark
        return out
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(strict(value), allow_nan=False, **kwargs)


def restore(value: Any) -> Any:
    """Undo `strict` in place (and return the value): the marked nulls are floats again."""
    if isinstance(value, dict):
        for key in [k for k in value if isinstance(k, str) and k.endswith(MARK)]:
            base, mark = key[: -len(MARK)], value[key]
            if isinstance(mark, str) and value.get(base) is None and base in value:
                value[base] = _float(mark)
            elif isinstance(mark, dict) and isinstance(value.get(base), list):
                items = value[base]
                for index, kind in mark.items():
                    if str(index).isdigit() and int(index) < len(items) and items[int(index)] is None:
                        items[int(index)] = _float(kind)
            else:
                continue  # a key of somebody else's that happens to end so: left as it is
            del value[key]
        for item in value.values():
            restore(item)
    elif isinstance(value, list):
        for item in value:
            restore(item)
    return value


def _float(kind: Any) -> float | None:
    return float(kind) if kind in ("nan", "inf", "-inf") else None
