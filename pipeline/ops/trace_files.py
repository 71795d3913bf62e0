"""Click trace files, one click per line: JSON Lines or CSV, each click with an optional ``label``.

JSONL: every line is one JSON object mapping a field name to a string or a
number (numbers are sent as their decimal text). Blank lines are skipped.

CSV: the first line names the columns; every further line is one click. An
EMPTY CELL MEANS THE FIELD IS ABSENT: a click without ``ts`` or ``device_id``
leaves that cell empty. CSV cannot tell an empty value from a missing one, so
a click whose value is the empty string is written, and replayed, without
that field (the detector then rejects it as ``missing_field`` rather than
``invalid_field``; JSONL keeps the difference). Quoted cells may hold commas
and line breaks; a record is reported by the line it starts on.

Either may be compressed (``.gz``, or a ``.zip`` of one file): see sources.py.

In both formats a ``label`` (what kind of traffic made the click) is for the
reader only: replay drops it and never sends it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePath
from typing import IO

import orjson

from pipeline.core.errors import FraudError
from pipeline.core.replies import pairs
from pipeline.ops.mapping import Mapping, MappingError, RowMapper
from pipeline.ops.sources import Source, csv_header, csv_records, record_text

LABEL = "label"
FORMATS = ("jsonl", "csv")
# The wire fields every click may have, first in a CSV header; extra fields follow.
CSV_LEADING = ("device_id", "ip", "transaction_id", "ts", LABEL)
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}


@dataclass(frozen=True)
class TraceClick:
    line: int
    fields: list[str]  # the flat field/value list to XADD
    fraud: bool | None = None  # what a mapped log's label column says, for a backtest

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


def resolve_format(source: Source, requested: str) -> str:
    """The format to read ``source`` in: as requested, or by its name's suffix, or by its first character."""
    if requested != "auto":
        return requested
    by_suffix = _SUFFIXES.get(PurePath(source.name).suffix.lower())
    if by_suffix:
        return by_suffix
    peek = getattr(source.stream, "peek", None)
    head = peek(4096) if peek else b""
    return "jsonl" if head.lstrip().startswith(b"{") else "csv"


def read_trace(source: Source, fmt: str) -> Iterator[TraceClick | BadLine]:
    """Every record of a trace as a click to send or a bad line to report, in order."""
    if fmt == "jsonl":
        yield from _read_jsonl(source.stream)
    else:
        yield from _read_csv(source.stream)


def read_mapped(source: Source, fmt: str, mapping: Mapping) -> Iterator[TraceClick | BadLine]:
    """Every record of a CSV log, its columns mapped to wire fields (see mapping.py)."""
    if fmt != "csv":
        raise FraudError("a column mapping applies to CSV logs only")
    records = csv_records(source.stream)
    to_click = RowMapper(mapping, csv_header(records))
    for record in records:
        if record.cells is None:
            yield BadLine(record.line, record.error, "")
            continue
        try:
            row = to_click(record.cells)
        except MappingError as err:
            yield BadLine(record.line, str(err), record_text(record.cells))
            continue
        yield TraceClick(record.line, row.fields, row.fraud)


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


def _read_csv(stream: IO[bytes]) -> Iterator[TraceClick | BadLine]:
    records = csv_records(stream)
    header = csv_header(records)
    for record in records:
        if record.cells is None:
            yield BadLine(record.line, record.error, "")
            continue
        row = record.cells
        if len(row) != len(header):
            yield BadLine(record.line, f"expected {len(header)} columns, got {len(row)}", record_text(row))
            continue
        fields = [v for name, value in zip(header, row, strict=True)
                  if value != "" and name != LABEL for v in (name, value)]
        yield TraceClick(record.line, fields) if fields else BadLine(record.line, "no fields", record_text(row))


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
