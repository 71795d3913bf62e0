"""Column mappings: which columns of someone else's click log make each wire field.

A mapping names the columns that make ``device_id`` (one, or several joined with ``:``, as a
TalkingData log keys a device by ``ip``+``device``+``os``), ``ip`` (text, or an integer taken as
an IPv4 address), ``ts`` (epoch s/ms/us, ISO-8601, or a strftime pattern, read in a time zone
when it carries none), ``transaction_id`` (optional, columns joined likewise) and the columns
that pass through under their own names. A team writes it once in a small TOML file::

    device_id = ["ip", "device", "os"]
    ip = "ip"
    ts = "click_time"
    ts_format = "%Y-%m-%d %H:%M:%S"
    tz = "UTC"
    pass = ["app", "channel"]
    label = "is_attributed"      # for fraud backtest: the column that says what happened
    fraud_values = ["0"]         # ... and its values that mean fraud (or fraud_if_empty = true)
"""

from __future__ import annotations

import socket
import tomllib
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipeline.core.errors import FraudError

EPOCH_FORMATS = {"epoch_s": 1000, "epoch_ms": 1, "epoch_us": 0}
TS_FORMATS = (*EPOCH_FORMATS, "iso")
JOIN = ":"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


class MappingError(ValueError):
    """Why one row cannot be mapped; ``str()`` goes into its bad-line report."""


@dataclass(frozen=True)
class Mapping:
    device_id: tuple[str, ...]
    ip: str
    ts: str | None = None
    ts_format: str = "epoch_ms"
    tz: str = "UTC"
    transaction_id: tuple[str, ...] = ()
    passthrough: tuple[str, ...] = ()
    label: str | None = None
    fraud_values: tuple[str, ...] = ()
    fraud_if_empty: bool = False

    def columns(self) -> set[str]:
        named = {*self.device_id, self.ip, *self.transaction_id, *self.passthrough}
        return named | {c for c in (self.ts, self.label) if c}


def mapping_from(options: dict[str, Any]) -> Mapping:
    """A checked mapping from a file's or the command line's options (names as in the module doc)."""
    known = {f.name for f in fields(Mapping)} | {"pass"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise FraudError(f"unknown mapping option(s): {', '.join(unknown)}")
    values = dict(options)
    if "pass" in values:
        values["passthrough"] = values.pop("pass")
    for name in ("device_id", "transaction_id", "passthrough", "fraud_values"):
        if isinstance(values.get(name), str):
            values[name] = (values[name],)
        if name in values:
            values[name] = tuple(str(v) for v in values[name])
    if not values.get("device_id") or not values.get("ip"):
        raise FraudError("a mapping needs the device_id column(s) and the ip column")
    mapping = Mapping(**values)
    if mapping.ts_format not in TS_FORMATS and "%" not in mapping.ts_format:
        raise FraudError(f"ts_format must be one of {', '.join(TS_FORMATS)} or a strftime pattern, "
                         f"got {mapping.ts_format!r}")
    time_zone(mapping.tz)
    if mapping.fraud_values and mapping.fraud_if_empty:
        raise FraudError("give fraud_values or fraud_if_empty, not both")
    return mapping


def load_options(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise FraudError(f"cannot read mapping {path}: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise FraudError(f"mapping {path}: {err}") from None


def time_zone(name: str) -> tzinfo:
    try:
        return UTC if name.upper() in ("UTC", "Z") else ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise FraudError(f"unknown time zone {name!r}") from None


def epoch_ms(value: str, scale: int) -> int:
    """Epoch seconds (scale 1000), milliseconds (1) or microseconds (0) as ms; a fraction is allowed."""
    whole, _, fraction = value.partition(".")
    if not whole.isascii() or not whole.isdigit() or (fraction and not fraction.isdigit()):
        raise MappingError(f"ts is not an epoch time: {value[:32]!r}")
    if scale == 1000:
        return int(whole) * 1000 + int((fraction + "000")[:3])
    return int(whole) if scale else int(whole) // 1000


class TimeReader:
    """Text to epoch ms in one of the formats; the last answer is kept, as logs repeat a second."""

    def __init__(self, fmt: str, tz: tzinfo) -> None:
        self.fmt = fmt
        self.tz = tz
        self.last: tuple[str, int] = ("", 0)

    def __call__(self, value: str) -> int:
        if value == self.last[0]:
            return self.last[1]
        if self.fmt in EPOCH_FORMATS:
            ms = epoch_ms(value, EPOCH_FORMATS[self.fmt])
        else:
            try:
                moment = (datetime.fromisoformat(value) if self.fmt == "iso"
                          else datetime.strptime(value, self.fmt))
            except ValueError:
                raise MappingError(f"ts {value[:40]!r} does not match {self.fmt!r}") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=self.tz)
            ms = (moment - _EPOCH) // _MS
            if ms < 0:
                raise MappingError(f"ts {value[:40]!r} is before 1970")
        self.last = (value, ms)
        return ms


def ip_text(value: str) -> str:
    """An integer is an IPv4 address (as TalkingData's ``ip`` ids); anything else goes as it is."""
    if value.isascii() and value.isdigit() and len(value) <= 10 and int(value) < 1 << 32:
        return socket.inet_ntoa(int(value).to_bytes(4, "big"))
    return value


@dataclass(frozen=True)
class MappedRow:
    ts: int | None
    fields: list[str]
    fraud: bool | None  # None: no label column in the mapping


class RowMapper:
    """A mapping bound to one file's header: a row of cells to wire fields."""

    def __init__(self, mapping: Mapping, header: list[str]) -> None:
        missing = sorted(mapping.columns() - set(header))
        if missing:
            raise FraudError(f"the header has no column {', '.join(map(repr, missing))} "
                             f"(it has {', '.join(header)})")
        at = {name: i for i, name in enumerate(header)}
        self.width = len(header)
        self.device = [at[c] for c in mapping.device_id]
        self.ip = at[mapping.ip]
        self.ts = at[mapping.ts] if mapping.ts else None
        self.transaction = [at[c] for c in mapping.transaction_id]
        self.passthrough = [(c, at[c]) for c in mapping.passthrough]
        self.label = at[mapping.label] if mapping.label else None
        self.fraud_values = frozenset(mapping.fraud_values)
        self.fraud_if_empty = mapping.fraud_if_empty
        self.read_time = TimeReader(mapping.ts_format, time_zone(mapping.tz))

    def __call__(self, row: list[str]) -> MappedRow:
        if len(row) != self.width:
            raise MappingError(f"expected {self.width} columns, got {len(row)}")
        device = JOIN.join(row[i] for i in self.device)
        out = ["device_id", device] if device.strip(JOIN) else []
        if row[self.ip]:
            out += ("ip", ip_text(row[self.ip]))
        ts = None
        if self.ts is not None and row[self.ts]:
            ts = self.read_time(row[self.ts])
            out += ("ts", str(ts))
        if self.transaction:
            out += ("transaction_id", JOIN.join(row[i] for i in self.transaction))
        out += (v for name, i in self.passthrough if row[i] != "" for v in (name, row[i]))
        return MappedRow(ts, out, self._fraud(row))

    def _fraud(self, row: list[str]) -> bool | None:
        if self.label is None:
            return None
        value = row[self.label]
        return value == "" if self.fraud_if_empty else value in self.fraud_values
