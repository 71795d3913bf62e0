"""An independent, sequential model of the documented contract, for tests to compare the pipeline with.

It is written from README's wire contract and rules, not from the implementation: entries are
taken one at a time in stream order, each gets one outcome, and state is plain Python lists.
"""

from __future__ import annotations

import ipaddress
import itertools
import math
import re
import socket
from collections import defaultdict
from dataclasses import dataclass, field

KNOWN = {b"device_id", b"ip", b"ts", b"transaction_id", b"lat", b"lon"}
RULES = ("ip_blacklist", "click_spam", "impossible_travel", "robotic")
DEGREES = re.compile(rb"-?\d{1,3}(\.\d{1,12})?", re.ASCII)
EARTH_RADIUS_M = 6_371_008.8
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
    rules: tuple[str, ...] = RULES
    robotic_intervals: int = 8
    robotic_min_intervals: int = 5
    robotic_spread_permille: int = 20
    robotic_lookback_ms: int = 600_000
    travel_max_kmh: int = 1_000
    travel_min_km: int = 100
    travel_lookback_ms: int = 3_600_000
    # device -> event times of its judged clicks (arrival order); (device, click name) -> ts of its judged
    # click; device -> (lat, lon, ts) of its last judged click with a position
    judged: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    named: dict[tuple[str, str], int] = field(default_factory=dict)
    positioned: dict[str, tuple[float, float, int]] = field(default_factory=dict)

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
        return self.click(arrival, device, name, ts, address, position(fields.get(b"lat"), fields.get(b"lon")))

    def click(self, arrival: int, device: str, name: str, ts: int,
              address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None,
              where: tuple[float, float] | None = None) -> str:
        """The rules for an accepted click. A click name is remembered while its judged click's
        ts is at least arrival - horizon - window; within that, the same name is a retry."""
        seen = self.named.get((device, name))
        if seen is not None and seen >= arrival - self.horizon_ms - self.window_ms:
            return "duplicate"
        self.named[device, name] = ts
        before = self.judged[device]
        matched = {
            "ip_blacklist": address in self.blacklist,
            "click_spam": sum(1 for t in before if ts - self.window_ms <= t <= ts) >= self.threshold,
            "impossible_travel": self._travels_too_fast(device, ts, where),
            "robotic": self._too_regular(before, ts),
        }
        before.append(ts)
        if where is not None:
            self.positioned[device] = (*where, ts)
        return next((rule for rule in RULES if rule in self.rules and matched[rule]), "clean")

    def _too_regular(self, before: list[int], ts: int) -> bool:
        """The last K intervals, from the newest back while each earlier click's ts is within the lookback."""
        chain = [ts]
        for t in reversed(before[-self.robotic_intervals:]):
            if t < ts - self.robotic_lookback_ms:
                break
            chain.append(t)
        gaps = [newer - older for newer, older in itertools.pairwise(chain)]
        if len(gaps) < self.robotic_min_intervals:
            return False
        # spread under permille/1000 of the mean
        return (max(gaps) - min(gaps)) * 1000 * len(gaps) < self.robotic_spread_permille * sum(gaps)

    def _travels_too_fast(self, device: str, ts: int, where: tuple[float, float] | None) -> bool:
        last = self.positioned.get(device)
        if where is None or last is None or last[2] < ts - self.travel_lookback_ms:
            return False
        metres = haversine_m(last[0], last[1], *where)
        allowed = self.travel_max_kmh * abs(ts - last[2])  # km/h x ms = metres x 3600
        return metres > self.travel_min_km * 1000 and metres * 3600 > allowed


class Rejected(Exception):
    pass


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    phi1, phi2 = lat1 * math.pi / 180, lat2 * math.pi / 180
    dphi, dlambda = (lat2 - lat1) * math.pi / 180, (lon2 - lon1) * math.pi / 180
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(min(1.0, h)))


def position(lat: bytes | None, lon: bytes | None) -> tuple[float, float] | None:
    """Both or neither; plain decimal degrees on the globe."""
    if lat is None and lon is None:
        return None
    if lat is None or lon is None:
        raise Rejected("invalid_position")
    for raw, bound in ((lat, 90), (lon, 180)):
        if not DEGREES.fullmatch(raw) or abs(float(raw)) > bound:
            raise Rejected("invalid_position")
    return float(lat), float(lon)


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
