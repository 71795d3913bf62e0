"""Stream entry ids: ordering and conversion to and from time."""

from __future__ import annotations

from collections.abc import Sequence


def parse_id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def batch_bounds(ids: Sequence[bytes]) -> tuple[bytes, bytes]:
    """First and last id of a batch, for XPENDING ranges. Every read (XREADGROUP,
    XAUTOCLAIM) returns entries in stream order and the stages keep that order,
    so the ends are the bounds: no sorting on the hot path."""
    return ids[0], ids[-1]


def id_at(ms: int) -> str:
    """The first possible entry id at a time, for MINID and range bounds (never before the epoch)."""
    return f"{max(ms, 0)}-0"
