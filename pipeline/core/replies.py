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


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value
