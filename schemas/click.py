"""The click: what producers write to the raw stream, and how it is checked.

Wire form (one stream entry, flat field/value pairs)::

    XADD clicks:raw * device_id D ip IP transaction_id T ts MS [more fields]

``device_id`` and ``ip`` are required; ``ts`` (event time, epoch ms) defaults
to the entry id's time; ``transaction_id`` names the click for de-duplication;
``lat`` and ``lon`` (decimal degrees, both or neither) are where the click was made.
Extra fields pass through to the verdict within the configured limits.

The clock is the entry's arrival time: the millisecond part of its id, which
the server set at XADD. A click is accepted only if its ``ts`` lies in
``[arrival - horizon, arrival + max_future]`` (``EventTimePolicy``), so no
producer's clock can move the windows or the series' retention.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Any, NamedTuple

import faust

from pipeline.core.settings import VERDICT_ADDED_FIELDS

DEVICE_ID_MAX = 128
TRANSACTION_ID_MAX = 128
# 9999-12-31T23:59:59.999Z: an entry id past it was set explicitly by a producer, not by the
# server's clock. Below it every accepted time (and a window bound) is exact in Lua's doubles.
ARRIVAL_MAX_MS = 253_402_300_799_999

REQUIRED_FIELDS = ("device_id", "ip")
KNOWN_FIELDS = frozenset(("device_id", "ip", "transaction_id", "ts", "lat", "lon"))
# The known fields a click may leave out (device_id and ip are required, ts defaults to the arrival):
# a verdict copies those the click has, unless FRAUD_VERDICT_FIELDS leaves them out.
OPTIONAL_KNOWN_FIELDS = ("transaction_id", "lat", "lon")
# A position's degrees: plain decimal text (no exponent, sign only '-', at most 12 decimals), so
# that Python and the server's Lua read it as the same double.
DEGREES = re.compile(rb"-?[0-9]{1,3}(?:\.[0-9]{1,12})?")
LAT_MAX, LON_MAX = 90.0, 180.0
# Names the detector adds to a verdict; a click may not bring its own.
RESERVED_FIELDS = frozenset(VERDICT_ADDED_FIELDS)


class Click(faust.Record, serializer="json", include_metadata=False):
    device_id: str
    ip: str
    ts: int
    transaction_id: str | None = None
    extra: dict[str, str] | None = None

    def wire_fields(self) -> list[str]:
        """The flat field/value list of this click's stream entry."""
        out = ["device_id", self.device_id, "ip", self.ip, "ts", str(self.ts)]
        if self.transaction_id is not None:
            out += ("transaction_id", self.transaction_id)
        if self.extra:
            for name, value in self.extra.items():
                out += (name, value)
        return out


@dataclass(frozen=True, slots=True)
class FieldLimits:
    max_fields: int = 32
    max_bytes: int = 1024


@dataclass(frozen=True, slots=True)
class EventTimePolicy:
    """Which event times a click may carry, relative to its arrival (see the module doc)."""

    horizon_ms: int = 300_000
    max_future_ms: int = 60_000


class InvalidClick(ValueError):
    """Why an entry is not a click; ``str()`` is the dead-letter reason."""


def canonical_ip(text: str) -> str:
    """The one spelling of an IPv4 or IPv6 address, so that a blacklist lookup cannot miss on case or zeros."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            packed = socket.inet_pton(family, text)
        except (OSError, ValueError):
            # ValueError: text the C call cannot take at all (a NUL byte).
            continue
        if family == socket.AF_INET6 and packed[:12] == b"\0" * 10 + b"\xff\xff":
            # An IPv4-mapped IPv6 address is the IPv4 host itself.
            return socket.inet_ntop(socket.AF_INET, packed[12:])
        return socket.inet_ntop(family, packed)
    raise InvalidClick(f"invalid_field: ip is not an IPv4 or IPv6 address: {text[:64]!r}")


def entry_time_ms(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def arrival_ms(entry_id: bytes | str) -> int:
    """The entry's arrival time (its id's millisecond part); InvalidClick past year 9999."""
    arrival = entry_time_ms(entry_id)
    if arrival > ARRIVAL_MAX_MS:
        raise InvalidClick(f"invalid_id: entry id time {arrival} is past year 9999 (set by the producer)")
    return arrival


class CheckedClick(NamedTuple):
    """A raw entry that passed every check, in the shape the detector sends on.

    The detector's hot path stops here rather than building a ``Click`` record:
    a record costs about 3 us, a third of the whole per-click check. Tools and
    producers build their entries from the record (``Click.wire_fields``).
    """

    device_id: str
    ip: str
    ts: int
    transaction_id: str | None
    # The entry's fields other than the known ones (KNOWN_FIELDS), as flat name/value pairs in the entry's
    # order (or only those FRAUD_VERDICT_FIELDS lists): the step writes the known ones from the click's record.
    extras: list[Any]
    # The entry's arrival time (its id's millisecond part): the clock of the policy.
    arrival: int
    # Where the click was made, in decimal degrees as sent; both empty when it carries no position.
    lat: str = ""
    lon: str = ""



_KNOWN_WIRE = frozenset(name.encode() for name in KNOWN_FIELDS)
_RESERVED_WIRE = frozenset(name.encode() for name in RESERVED_FIELDS)


def check_size(flat: list[bytes] | None, limits: FieldLimits) -> dict[bytes, bytes]:
    """The size checks, first of all (the router makes them too, before it copies an entry on);
    returns the fields as a mapping, or raises InvalidClick."""
    if not flat:
        raise InvalidClick("deleted: entry was trimmed" if flat is None else "missing_field: entry has no fields")
    if len(flat) > 2 * limits.max_fields:
        raise InvalidClick(f"too_many_fields: {len(flat) // 2} > {limits.max_fields}")
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    if len(fields) * 2 != len(flat):
        raise InvalidClick("duplicate_field: a field name appears twice")
    if max(map(len, flat)) > limits.max_bytes:
        name = next(n for n, v in fields.items() if len(n) > limits.max_bytes or len(v) > limits.max_bytes)
        raise InvalidClick(f"oversized_field: {_text(name)[:64]!r} exceeds {limits.max_bytes} bytes")
    return fields


def check_click(entry_id: bytes | str, flat: list[bytes] | None, limits: FieldLimits,
                policy: EventTimePolicy, copied: tuple[bytes, ...] | None = None) -> CheckedClick:
    """Check one raw entry (fields as bytes, as Redis returns them); raise InvalidClick with the reason.

    ``copied``: the names beyond KNOWN_FIELDS the verdict copies (None: every one); ``extras`` holds
    those the click has.

    This runs once per click on the hot path, so it reads each field once and
    decodes only those it must. The size limits are checked first, before any
    field is looked at.
    """
    fields = check_size(flat, limits)
    if not _RESERVED_WIRE.isdisjoint(fields):
        name = next(n for n in fields if n in _RESERVED_WIRE)
        raise InvalidClick(f"reserved_field: {_text(name)!r} is set by the detector")
    # The verdict's extras: every unknown field in the entry's order, or (copied) only the listed ones it has.
    extras: list[Any] = [] if copied is None else [
        v for name in copied if (value := fields.get(name)) is not None for v in (name, value)]
    for pair in fields.items():
        if pair[0] not in _KNOWN_WIRE:
            _decode(pair[0], "field name")
            _decode(pair[1], "value")
            if copied is None:
                extras += pair
    device_raw = fields.get(b"device_id")
    ip_raw = fields.get(b"ip")
    if device_raw is None:
        raise InvalidClick("missing_field: device_id")
    if ip_raw is None:
        raise InvalidClick("missing_field: ip")
    device_id = _decode(device_raw, "device_id")
    if not 1 <= len(device_id) <= DEVICE_ID_MAX or not device_id.isprintable():
        raise InvalidClick(f"invalid_field: device_id must be 1-{DEVICE_ID_MAX} printable characters")
    ip_text = _decode(ip_raw, "ip")
    ip = canonical_ip(ip_text)
    arrival = arrival_ms(entry_id)
    ts_raw = fields.get(b"ts")
    ts = arrival if ts_raw is None else _event_time(ts_raw, arrival, policy)
    transaction_raw = fields.get(b"transaction_id")
    transaction_id = None if transaction_raw is None else _decode(transaction_raw, "transaction_id")
    if transaction_id is not None and (
        not 1 <= len(transaction_id) <= TRANSACTION_ID_MAX or not transaction_id.isprintable()
    ):
        raise InvalidClick(
            f"invalid_field: transaction_id must be 1-{TRANSACTION_ID_MAX} printable characters")
    lat, lon = _position(fields.get(b"lat"), fields.get(b"lon"))
    return CheckedClick(device_id, ip, ts, transaction_id, extras, arrival, lat, lon)


def _position(lat_raw: bytes | None, lon_raw: bytes | None) -> tuple[str, str]:
    """A click's position as its two texts (empty for none); InvalidClick for half of one, a
    malformed one, or one off the globe."""
    if lat_raw is None and lon_raw is None:
        return "", ""
    if lat_raw is None or lon_raw is None:
        given, missing = ("lat", "lon") if lon_raw is None else ("lon", "lat")
        raise InvalidClick(f"invalid_position: {given} without {missing}")
    return _degrees(lat_raw, "lat", LAT_MAX), _degrees(lon_raw, "lon", LON_MAX)


def _degrees(raw: bytes, name: str, bound: float) -> str:
    if not DEGREES.fullmatch(raw) or abs(float(raw)) > bound:
        raise InvalidClick(
            f"invalid_position: {name} must be decimal degrees in [-{bound:g}, {bound:g}], got {_text(raw)[:32]!r}")
    return raw.decode()


def _decode(raw: bytes, what: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise InvalidClick(f"undecodable: a {what} is not UTF-8") from None


def _text(raw: bytes | str) -> str:
    """For messages only: never fails, whatever the bytes."""
    return raw if isinstance(raw, str) else raw.decode(errors="replace")


def _event_time(raw: bytes, arrival: int, policy: EventTimePolicy) -> int:
    # bytes.isdigit() accepts ASCII digits only, so no sign, space or exponent gets through.
    if not raw.isdigit():
        raise InvalidClick(f"invalid_field: ts must be epoch milliseconds, got {_text(raw)[:32]!r}")
    digits = raw.lstrip(b"0") or b"0"
    lowest, highest = arrival - policy.horizon_ms, arrival + policy.max_future_ms
    # More digits than the bound has is past it, whatever the value: no huge int is built.
    if len(digits) > len(str(highest)):
        shown = digits.decode() if len(digits) <= 32 else f"{digits[:32].decode()}... ({len(digits)} digits)"
        raise InvalidClick(f"ts_in_future: ts {shown} > arrival {arrival} + {policy.max_future_ms} = {highest}")
    ts = int(digits)
    if ts < lowest:
        raise InvalidClick(f"ts_too_old: ts {ts} < arrival {arrival} - {policy.horizon_ms} = {lowest}")
    if ts > highest:
        raise InvalidClick(f"ts_in_future: ts {ts} > arrival {arrival} + {policy.max_future_ms} = {highest}")
    return ts
