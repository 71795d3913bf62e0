"""An independent, sequential model of the documented contract, for tests to compare the pipeline with.

It is written from README's wire contract and rules, not from the implementation: entries are
taken one at a time in stream order, each gets one outcome, and state is plain Python lists.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import defaultdict
from dataclasses import dataclass, field

KNOWN = {b"device_id", b"ip", b"ts", b"transaction_id"}
RESERVED = {b"verdict", b"raw_id"}
YEAR_9999_END_MS = 253_402_300_799_999


@dataclass
class RuleModel:
    window_ms: int = 10_000
    threshold: int = 2
    horizon_ms: int = 300_000
    max_future_ms: int = 60_000
    max_fields: int = 32
    max_bytes: int = 1024
    blacklist: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address] = frozenset()
    # device -> event times of its judged clicks; (device, click name) -> ts of its judged click
    judged: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    named: dict[tuple[str, str], int] = field(default_factory=dict)

    def outcome(self, entry_id: str, flat: list[bytes]) -> str:
        """A verdict, 'duplicate', or the dead letter's reason code."""
        try:
            return self._judge(entry_id, flat)
        except Rejected as why:
            return str(why)

    def _judge(self, entry_id: str, flat: list[bytes]) -> str:
        names = flat[::2]
        if len(names) > self.max_fields:
            raise Rejected("too_many_fields")
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        if len(fields) != len(names):
            raise Rejected("duplicate_field")
        if any(len(item) > self.max_bytes for item in flat):
            raise Rejected("oversized_field")
        if RESERVED & set(names):
            raise Rejected("reserved_field")
        for name, value in fields.items():
            if name not in KNOWN:
                text(name)
                text(value)
        if b"device_id" not in fields or b"ip" not in fields:
            raise Rejected("missing_field")
        device = text(fields[b"device_id"])
        if not (1 <= len(device) <= 128 and device.isprintable()):
            raise Rejected("invalid_field")
        address = ip_address(text(fields[b"ip"]))
        arrival = int(entry_id.split("-")[0])
        if arrival > YEAR_9999_END_MS:
            raise Rejected("invalid_id")
        ts = arrival
        if b"ts" in fields:
            raw = fields[b"ts"]
            if not raw or any(c not in b"0123456789" for c in raw):
                raise Rejected("invalid_field")
            ts = int(raw)
            if ts < arrival - self.horizon_ms:
                raise Rejected("ts_too_old")
            if ts > arrival + self.max_future_ms:
                raise Rejected("ts_in_future")
        name = "e:" + entry_id
        if b"transaction_id" in fields:
            tx = text(fields[b"transaction_id"])
            if not (1 <= len(tx) <= 128 and tx.isprintable()):
                raise Rejected("invalid_field")
            name = "t:" + tx
        return self.click(arrival, device, name, ts, address)

    def click(self, arrival: int, device: str, name: str, ts: int,
              address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None) -> str:
        """The rules for an accepted click. A click name is remembered while its judged click's
        ts is at least arrival - horizon - window; within that, the same name is a retry."""
        seen = self.named.get((device, name))
        if seen is not None and seen >= arrival - self.horizon_ms - self.window_ms:
            return "duplicate"
        self.named[device, name] = ts
        earlier = sum(1 for t in self.judged[device] if ts - self.window_ms <= t <= ts)
        self.judged[device].append(ts)
        if address in self.blacklist:
            return "ip_blacklist"
        return "click_spam" if earlier >= self.threshold else "clean"


class Rejected(Exception):
    pass


def text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("undecodable") from None


def ip_address(spelling: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address an IPv4 or IPv6 text names (an IPv4-mapped IPv6 address is the IPv4 host);
    None for a valid spelling the ipaddress module reads otherwise (no blacklist entry is one)."""
    valid = False
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, spelling)
            valid = True
        except (OSError, ValueError):
            pass
    if not valid:
        raise Rejected("invalid_field")
    try:
        address = ipaddress.ip_address(spelling)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
