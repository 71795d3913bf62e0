"""Flat Redis replies (``[name, value, name, value, ...]``: a stream entry's fields, XINFO,
HGETALL with RESP2) as mappings, in one way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def pairs(flat: Sequence[Any]) -> dict[Any, Any]:
    """name -> value of a flat reply; a name given twice keeps its last value."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def text_pairs(flat: Sequence[Any]) -> dict[str, Any]:
    """``pairs`` with names (and byte-string values) decoded as UTF-8."""
    return {_text(name): _text(value) for name, value in pairs(flat).items()}


def first_value(flat: Sequence[Any], name: Any, missing: Any) -> Any:
    """The value of the first field `name` in a flat name/value list; `missing` when there is none.
    ``list.index`` finds it at C speed (on hot paths: the router, the aggregator); a value spelled
    like the name (an odd position) takes the slow path."""
    if not flat:
        return missing
    try:
        at = flat.index(name)
    except ValueError:
        return missing
    if at % 2 == 0 and at + 1 < len(flat):
        return flat[at + 1]
    for at in range(0, len(flat) - 1, 2):
        if flat[at] == name:
            return flat[at + 1]
    return missing


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value
