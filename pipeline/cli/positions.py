"""Command-line positions in a stream: an entry id, or a time as epoch ms or ISO-8601."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pipeline.core.stream_ids import id_at, parse_id

# The highest sequence number of an entry id (an unsigned 64-bit integer).
MAX_SEQ = 2**64 - 1

_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
_EPOCH_MS = re.compile(r"^\d{1,16}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Position:
    """An exact entry id (``seq`` set) or a point in time (``seq`` None)."""

    ms: int
    seq: int | None = None

    def as_start(self) -> str:
        """Inclusive range start: a time starts at its first possible id."""
        return id_at(self.ms) if self.seq is None else f"{self.ms}-{self.seq}"

    def as_end(self) -> str:
        """Inclusive range end: a time covers its whole millisecond."""
        return f"{self.ms}-{MAX_SEQ if self.seq is None else self.seq}"


def parse_time_ms(text: str) -> int:
    """Epoch milliseconds, or an ISO-8601 date-time (UTC when it names no zone)."""
    if _EPOCH_MS.match(text):
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not epoch ms or ISO-8601: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    ms = (moment - _EPOCH) // timedelta(milliseconds=1)
    if ms < 0:
        raise argparse.ArgumentTypeError(f"time before 1970: {text!r}")
    return ms


def entry_id(text: str) -> str:
    """An argparse type: an entry id ``MS-SEQ`` (or ``MS``, meaning ``MS-0``) in canonical form."""
    if _EPOCH_MS.match(text):
        text = id_at(int(text))
    if not _ID.match(text):
        raise argparse.ArgumentTypeError(f"not a stream entry id (MS-SEQ): {text!r}")
    ms, seq = parse_id(text)
    if seq > MAX_SEQ or ms > MAX_SEQ:
        raise argparse.ArgumentTypeError(f"entry id out of range: {text!r}")
    return f"{ms}-{seq}"


def position(text: str) -> Position:
    """An argparse type: an entry id, or a time (epoch ms or ISO-8601)."""
    if _ID.match(text):
        ms, seq = parse_id(entry_id(text))
        return Position(ms, seq)
    return Position(parse_time_ms(text))


def time_ms(text: str) -> int:
    """An argparse type for a time only."""
    return parse_time_ms(text)


def id_before_time(ms: int) -> str:
    """The id just before ``<ms>-0``: a group set there is delivered everything from ``ms`` on."""
    return "0-0" if ms == 0 else f"{ms - 1}-{MAX_SEQ}"
