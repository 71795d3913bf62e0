"""The click: what producers write to the raw stream, and how it is checked.

Wire form (one stream entry, flat field/value pairs)::

    XADD clicks:raw * device_id D ip IP transaction_id T ts MS [more fields]

``device_id`` and ``ip`` are required; ``ts`` (event time, epoch ms) defaults
to the entry id's time; ``transaction_id`` names the click for de-duplication.
Extra fields pass through to the verdict within the configured limits.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

import faust

DEVICE_ID_MAX = 128
TRANSACTION_ID_MAX = 128
# Event times beyond what a float64 holds exactly cannot be windowed exactly in Lua.
TS_MAX = 2**53 - 1

REQUIRED_FIELDS = ("device_id", "ip")
KNOWN_FIELDS = frozenset(("device_id", "ip", "transaction_id", "ts"))
# Names the detector adds to a verdict; a click may not bring its own.
RESERVED_FIELDS = frozenset(("verdict", "raw_id"))


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


class InvalidClick(ValueError):
    """Why an entry is not a click; ``str()`` is the dead-letter reason."""


def canonical_ip(text: str) -> str:
    """The one spelling of an IPv4 or IPv6 address, so that a blacklist lookup cannot miss on case or zeros."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            packed = socket.inet_pton(family, text)
        except OSError:
            continue
        if family == socket.AF_INET6 and packed[:12] == b"\0" * 10 + b"\xff\xff":
            # An IPv4-mapped IPv6 address is the IPv4 host itself.
            return socket.inet_ntop(socket.AF_INET, packed[12:])
        return socket.inet_ntop(family, packed)
    raise InvalidClick(f"invalid_field: ip is not an IPv4 or IPv6 address: {text[:64]!r}")


def entry_time_ms(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def parse_click(entry_id: bytes | str, flat: list[Any] | None, limits: FieldLimits) -> Click:
    """Check one raw entry and build its Click; raise InvalidClick with the reason."""
    if not flat:
        raise InvalidClick("missing_field: entry has no fields" if flat is not None else "deleted: entry was trimmed")
    if len(flat) > 2 * limits.max_fields:
        raise InvalidClick(f"too_many_fields: {len(flat) // 2} > {limits.max_fields}")
    fields: dict[str, str] = {}
    for i in range(0, len(flat) - 1, 2):
        name, value = _decode(flat[i], "field name"), _decode(flat[i + 1], "value")
        if len(flat[i]) > limits.max_bytes or len(flat[i + 1]) > limits.max_bytes:
            raise InvalidClick(f"oversized_field: {name[:64]!r} exceeds {limits.max_bytes} bytes")
        if name in fields:
            raise InvalidClick(f"duplicate_field: {name[:64]!r}")
        if name in RESERVED_FIELDS:
            raise InvalidClick(f"reserved_field: {name!r} is set by the detector")
        fields[name] = value
    for name in REQUIRED_FIELDS:
        if name not in fields:
            raise InvalidClick(f"missing_field: {name}")
    device_id = fields.pop("device_id")
    if not 1 <= len(device_id) <= DEVICE_ID_MAX or not device_id.isprintable():
        raise InvalidClick(f"invalid_field: device_id must be 1-{DEVICE_ID_MAX} printable characters")
    ip = canonical_ip(fields.pop("ip"))
    ts = _event_time(fields.pop("ts", None), entry_id)
    transaction_id = fields.pop("transaction_id", None)
    if transaction_id is not None and (
        not 1 <= len(transaction_id) <= TRANSACTION_ID_MAX or not transaction_id.isprintable()
    ):
        raise InvalidClick(f"invalid_field: transaction_id must be 1-{TRANSACTION_ID_MAX} printable characters")
    return Click(device_id=device_id, ip=ip, ts=ts, transaction_id=transaction_id, extra=fields or None)


def _decode(raw: Any, what: str) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise InvalidClick(f"undecodable: a {what} is not UTF-8") from None


def _event_time(text: str | None, entry_id: bytes | str) -> int:
    if text is None:
        return entry_time_ms(entry_id)
    if not text.isascii() or not text.isdigit() or len(text) > 16:
        raise InvalidClick(f"invalid_field: ts must be epoch milliseconds, got {text[:32]!r}")
    ts = int(text)
    if ts > TS_MAX:
        raise InvalidClick(f"invalid_field: ts {ts} is out of range")
    return ts
