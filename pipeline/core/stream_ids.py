"""Stream entry ids: ordering and conversion to and from time."""

from __future__ import annotations


def parse_id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def id_at(ms: int) -> str:
    """The first possible entry id at a time, for MINID and range bounds (never before the epoch)."""
    return f"{max(ms, 0)}-0"
