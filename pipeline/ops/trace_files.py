"""Click trace files, one click per line: JSON Lines or CSV, each click with an optional ``label``.

JSONL: every line is one JSON object mapping a field name to a string or a
number (numbers are sent as their decimal text). Blank lines are skipped.

CSV: the first line names the columns; every further line is one click. An
EMPTY CELL MEANS THE FIELD IS ABSENT: a click without ``ts`` or ``device_id``
leaves that cell empty. CSV cannot tell an empty value from a missing one, so
a click whose value is the empty string is written, and replayed, without
that field (the detector then rejects it as ``missing_field`` rather than
``invalid_field``; JSONL keeps the difference). One record per line: quoted
line breaks are not supported, which keeps the reported line numbers exact.

In both formats a ``label`` (what kind of traffic made the click) is for the
reader only: replay drops it and never sends it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson

from pipeline.core.errors import FraudError
from pipeline.core.replies import pairs

LABEL = "label"
FORMATS = ("jsonl", "csv")
# The wire fields every click may have, first in a CSV header; extra fields follow.
CSV_LEADING = ("device_id", "ip", "transaction_id", "ts", LABEL)
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}


@dataclass(frozen=True)
class TraceClick:
    line: int
    fields: list[str]  # the flat field/value list to XADD

    def event_time(self) -> int | None:
        """The click's ``ts`` when it is epoch ms, for pacing; None when absent or not a number."""
        for i in range(0, len(self.fields), 2):
            if self.fields[i] == "ts":
                value = self.fields[i + 1]
                return int(value) if value.isascii() and value.isdigit() and len(value) <= 16 else None
        return None


@dataclass(frozen=True)
class BadLine:
    line: int
    reason: str
    text: str


def resolve_format(path: Path, requested: str) -> str:
    """The format to read ``path`` in: as requested, or by suffix, or by its first character."""
    if requested != "auto":
        return requested
    by_suffix = _SUFFIXES.get(path.suffix.lower())
    if by_suffix:
        return by_suffix
    with path.open("rb") as f:
        head = f.read(4096).lstrip()
    return "jsonl" if head.startswith(b"{") else "csv"


def count_lines(path: Path) -> int:
    """Lines in the file (a last line without a newline counts), read in large blocks."""
    lines = 0
    last = b"\n"
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def read_trace(path: Path, fmt: str) -> Iterator[TraceClick | BadLine]:
    """Every line of a trace file as a click to send or a bad line to report, in order."""
    with path.open("rb") as f:
        if fmt == "jsonl":
            yield from _read_jsonl(f)
        else:
            yield from _read_csv(f)


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\r\n").decode("utf-8", "replace")


def _wire_value(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _read_jsonl(lines: IO[bytes]) -> Iterator[TraceClick | BadLine]:
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            # orjson's own "line 1" would contradict the file's line number.
            yield BadLine(number, f"not JSON: {err.msg} at column {err.colno}", _text(raw))
            continue
        if not isinstance(obj, dict):
            yield BadLine(number, f"not a JSON object but {type(obj).__name__}", _text(raw))
            continue
        fields: list[str] = []
        bad = None
        for name, value in obj.items():
            if name == LABEL:
                continue
            wire = _wire_value(value)
            if wire is None:
                bad = f"value of {name[:64]!r} is not a string or a number"
                break
            fields += (name, wire)
        if bad is None and not fields:
            bad = "no fields"
        yield BadLine(number, bad, _text(raw)) if bad else TraceClick(number, fields)


def _read_csv(lines: IO[bytes]) -> Iterator[TraceClick | BadLine]:
    header = _csv_header(lines.readline())
    for number, raw in enumerate(lines, 2):
        text = _text(raw)
        if not text.strip():
            continue
        try:
            (row,) = csv.reader([text], strict=True)
        except (csv.Error, ValueError) as err:
            yield BadLine(number, f"not a CSV record: {err}", text)
            continue
        if len(row) != len(header):
            yield BadLine(number, f"expected {len(header)} columns, got {len(row)}", text)
            continue
        fields = [v for name, value in zip(header, row, strict=True)
                  if value != "" and name != LABEL for v in (name, value)]
        yield TraceClick(number, fields) if fields else BadLine(number, "no fields", text)


def _csv_header(raw: bytes) -> list[str]:
    try:
        (header,) = csv.reader([raw.decode("utf-8").rstrip("\r\n")], strict=True)
    except (UnicodeDecodeError, csv.Error, ValueError) as err:
        raise FraudError(f"line 1: not a CSV header: {err}") from None
    if not header or "" in header:
        raise FraudError("line 1: the CSV header must name every column")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise FraudError(f"line 1: the CSV header repeats {', '.join(repeated)}")
    return header


def jsonl_line(fields: list[str], label: str) -> bytes:
    named = pairs(fields)
    named[LABEL] = label
    return orjson.dumps(named) + b"\n"


def csv_columns(field_names: Iterable[str]) -> list[str]:
    """The header: the leading columns, then every other field name in first-seen order."""
    columns = list(CSV_LEADING)
    for name in field_names:
        if name not in columns:
            columns.append(name)
    return columns


def csv_row(columns: list[str], fields: list[str], label: str) -> list[str]:
    """A click's cells under ``columns``: absent fields (and empty values) are empty cells."""
    named = pairs(fields)
    named[LABEL] = label
    return [named.get(name, "") for name in columns]
