"""Synthetic click traffic with the patterns the detector must tell apart.

Humans click now and then from a large pool of devices; bots fire bursts from
one device; metronome bots click at a fixed period (slower than click spam);
travellers send their position, now and then hopping to another continent in
minutes; some clicks come from blacklisted IPs; producers retry (the same
click again); a few entries are malformed. Every click carries a ``label``
saying which pattern made it, so a trace can be checked against the verdicts.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import ipaddress
import itertools
import random
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from pipeline.client.connection import open_fast_client, open_patiently
from pipeline.client.partitioning import agree_partitions
from pipeline.client.producer import Partitioner
from pipeline.client.resp import RespClient, RespConnectionError, RespError, is_server_state_error
from pipeline.core.errors import FraudError
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.core.signals import stop_on_signals
from pipeline.core.waiting import wait_or_stop
from schemas.click import Click as ClickRecord

log = structlog.get_logger()

BLACKLIST_V4 = ipaddress.ip_network("203.0.113.0/26")
BLACKLIST_V6 = ipaddress.ip_network("2001:db8:bad::/120")


def blacklisted_ips() -> list[str]:
    """The demo's known-bad addresses, IPv4 and IPv6, that the demo loads into the blacklist."""
    return [str(ip) for ip in BLACKLIST_V4] + [str(ip) for ip in BLACKLIST_V6]


# Where travellers click: (lat, lon) of cities on every continent, the antimeridian's sides and the far north.
CITIES: tuple[tuple[float, float], ...] = (
    (48.8566, 2.3522), (51.5074, -0.1278), (40.7128, -74.006), (-33.8688, 151.2093), (1.3521, 103.8198),
    (35.6762, 139.6503), (-23.5505, -46.6333), (-1.2921, 36.8219), (-18.1248, 178.4501), (-13.8333, -171.75),
    (78.2232, 15.6267), (64.1466, -21.9426),
)


@dataclass(frozen=True)
class TrafficMix:
    human: float = 0.83
    bot_burst: float = 0.04
    blacklisted: float = 0.05
    retry: float = 0.03
    malformed: float = 0.02
    traveller: float = 0.03
    humans: int = 20_000
    bots: int = 50
    burst_min: int = 3
    burst_max: int = 12
    # Metronome bots, each clicking every period (one drawn per bot in this range, ms; above half of
    # the default click-spam window, so that they are not click_spam) with a jitter of +-2 per mille.
    metronomes: int = 20
    period_min_ms: int = 5_500
    period_max_ms: int = 9_000
    # Travellers: a click of theirs carries a position three times in four, near their city (a few km);
    # one in twenty of those is in another city at once (an impossible hop, labelled so).
    travellers: int = 200
    hop: float = 0.05


Clock = Callable[[], int]
Click = list[str]

MALFORMED: tuple[Callable[[random.Random, int], Click], ...] = (
    lambda r, ts: ["ip", "198.51.100.7", "ts", str(ts)],
    lambda r, ts: ["device_id", f"dev-{r.randrange(10**6)}", "ip", "300.1.2.3", "ts", str(ts)],
    lambda r, ts: ["device_id", f"dev-{r.randrange(10**6)}", "ip", "198.51.100.7", "ts", "yesterday"],
    lambda r, ts: ["device_id", "", "ip", "198.51.100.7", "ts", str(ts)],
    lambda r, ts: ["device_id", "x" * 200, "ip", "198.51.100.7"],
    lambda r, ts: ["device_id", f"dev-{r.randrange(10**6)}", "ip", "198.51.100.7", "lat", "91", "lon", "0"],
)


class Metronomes:
    """The metronome bots: which one is due next, and when (event time)."""

    def __init__(self, rng: random.Random, mix: TrafficMix, start: int) -> None:
        self.rng = rng
        self.due: list[tuple[int, str, int]] = []
        for n in range(mix.metronomes):
            period = rng.randint(mix.period_min_ms, mix.period_max_ms)
            heapq.heappush(self.due, (start + rng.randrange(period), f"robot-{n}", period))

    def next_before(self, ts: int) -> tuple[str, int] | None:
        """The bot due at or before ts, and its click's time (then it is due a period later)."""
        if not self.due or self.due[0][0] > ts:
            return None
        at, device, period = heapq.heappop(self.due)
        jitter = self.rng.randint(-period // 500, period // 500)
        heapq.heappush(self.due, (at + period + jitter, device, period))
        return device, at


class Travellers:
    """Devices that send their position: each stays in one city until it hops (at once) to another."""

    def __init__(self, rng: random.Random, mix: TrafficMix) -> None:
        self.rng, self.hop = rng, mix.hop
        self.cities = [rng.choice(CITIES) for _ in range(mix.travellers)]
        # Whether a traveller sent a position yet: its first one is no hop from anywhere.
        self.placed = [False] * mix.travellers

    def click(self, transaction_id: str, ts: int) -> tuple[Click, str]:
        """A traveller's click: without a position, near its city, or (an impossible hop) in another city."""
        rng, n = self.rng, self.rng.randrange(len(self.cities))
        device, ip = f"traveller-{n}", f"198.19.{n % 256}.{n // 256 + 1}"
        draw = rng.random()
        if draw < 0.25:
            return _click(device, ip, transaction_id, ts), "traveller"
        label = "traveller"
        if draw > 1 - self.hop * 0.75:
            self.cities[n] = rng.choice([c for c in CITIES if c != self.cities[n]])
            label = "impossible_hop" if self.placed[n] else "traveller"
        self.placed[n] = True
        lat, lon = self.cities[n]
        lat = max(-90.0, min(90.0, lat + rng.uniform(-0.02, 0.02)))
        lon = (lon + rng.uniform(-0.02, 0.02) + 180) % 360 - 180
        return _click(device, ip, transaction_id, ts, {"lat": f"{lat:.5f}", "lon": f"{lon:.5f}"}), label


def traffic(seed: int, clock: Clock, mix: TrafficMix = TrafficMix()) -> Iterator[tuple[Click, str]]:
    """An endless labelled stream of clicks (fields, label); event time comes from ``clock``."""
    rng = random.Random(seed)
    bad_ips = blacklisted_ips()
    recent: deque[Click] = deque(maxlen=1000)
    weights = (mix.human, mix.bot_burst, mix.blacklisted, mix.retry, mix.malformed, mix.traveller)
    kinds = ("human", "bot_burst", "blacklisted", "retry", "malformed", "traveller")
    travellers = Travellers(rng, mix)
    serial = 0
    metronomes: Metronomes | None = None
    while True:
        ts = clock()
        metronomes = metronomes or Metronomes(rng, mix, ts)
        due = metronomes.next_before(ts)
        if due is not None:
            serial += 1
            device, at = due
            click = _click(device, f"198.18.{zlib.crc32(device.encode()) % 256}.1", f"tx-{seed}-{serial}", at)
            recent.append(click)
            yield click, "metronome"
            continue
        kind = rng.choices(kinds, weights)[0]
        if kind == "retry" and recent:
            yield list(rng.choice(recent)), "retry"
            continue
        if kind == "malformed":
            yield rng.choice(MALFORMED)(rng, ts), "malformed"
            continue
        if kind == "traveller":
            serial += 1
            click, label = travellers.click(f"tx-{seed}-{serial}", ts)
            recent.append(click)
            yield click, label
            continue
        if kind == "bot_burst":
            device = f"bot-{rng.randrange(mix.bots)}"
            ip = _random_ip(rng)
            for offset in range(rng.randint(mix.burst_min, mix.burst_max)):
                serial += 1
                click = _click(device, ip, f"tx-{seed}-{serial}", ts + offset * rng.randint(50, 400))
                recent.append(click)
                yield click, "bot_burst"
            continue
        serial += 1
        ip = rng.choice(bad_ips) if kind == "blacklisted" else _random_ip(rng)
        click = _click(f"dev-{rng.randrange(mix.humans)}", ip, f"tx-{seed}-{serial}", ts)
        recent.append(click)
        yield click, kind if kind == "blacklisted" else "human"


def _click(device: str, ip: str, transaction_id: str, ts: int, extra: dict[str, str] | None = None) -> Click:
    record = ClickRecord(device_id=device, ip=ip, ts=ts, transaction_id=transaction_id,
                         extra={"campaign": f"c{zlib.crc32(device.encode()) % 17}", **(extra or {})})
    return record.wire_fields()


def _random_ip(rng: random.Random) -> str:
    if rng.random() < 0.15:
        return str(ipaddress.IPv6Address((0x2001_0DB8 << 96) | rng.getrandbits(64)))
    return f"{rng.randint(1, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randint(1, 254)}"


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


Destination = Callable[[Click], str]


async def produce(client: RespClient, stream: str | Destination, clicks: Iterator[tuple[Click, str]], *,
                  rate: float, total: int | None, stop: asyncio.Event, batch: int = 200,
                  sends: float | None = None) -> int:
    """XADD clicks in pipelined batches, at ``rate`` per second (0: as fast as Redis takes them), to
    one stream or to the stream a function names for each click (its partition's input), in
    ``sends`` batches a second when given."""
    destination: Destination = (lambda _: stream) if isinstance(stream, str) else stream
    sent = 0
    started = time.monotonic()
    if rate > 0:
        # About ten sends a second by default: smooth at demo rates, still batched at high ones.
        batch = max(1, int(rate / sends) if sends else min(batch, int(rate / 10)))
    backoff = 0.0
    while not stop.is_set() and (total is None or sent < total):
        size = batch if total is None else min(batch, total - sent)
        fields = [next(clicks)[0] for _ in range(size)]
        commands = [("XADD", destination(f), "*", *f) for f in fields]
        while not await _sent(client, commands):
            # Redis is away (restarting, loading): send the batch again once it is back. Clicks that
            # had landed come twice with their transaction ids, and the detector keeps one of each.
            backoff = min(5.0, max(0.1, backoff * 2))
            log.warning("redis unavailable, resending the batch", retry_in_s=backoff)
            await wait_or_stop(stop, backoff)
            if stop.is_set():
                return sent
        backoff = 0.0
        sent += size
        if rate > 0:
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                await wait_or_stop(stop, ahead)
    return sent


async def _sent(client: RespClient, commands: list[tuple[Any, ...]]) -> bool:
    """True once every command of the batch was taken; False when the server was unreachable or refused
    for its state (the batch's outcome is then unknown)."""
    try:
        replies = await client.pipeline(commands)
    except (RespConnectionError, OSError):
        return False
    refused = [r for r in replies if isinstance(r, RespError)]
    if any(not is_server_state_error(r) for r in refused):
        raise refused[0]
    return not refused


async def run_generator(args: argparse.Namespace, settings: Settings) -> int:
    client = await open_patiently(lambda: open_fast_client(settings), log)
    stop = stop_on_signals()
    keys = Keys(settings.namespace)
    clicks = traffic(args.seed, wall_clock_ms)
    if args.pregenerate:
        clicks = pregenerated(args.seed, args.total)
    destination: str | Destination = keys.raw
    if args.direct:
        # Straight into the partitions' inputs (no router hop), split as the pipeline records it.
        partitions = await agree_partitions(client.execute, keys, settings.partitions, record=False)
        destination = Partitioner(keys, partitions).stream
    log.info("generator started", rate=args.rate, total=args.total,
             stream="partitions" if args.direct else keys.raw)
    cpu_before, started = time.process_time(), time.monotonic()
    try:
        sent = await produce(client, destination, clicks, rate=args.rate, total=args.total, stop=stop,
                             sends=args.sends)
    finally:
        await client.close()
    if args.pregenerate:
        # What sending alone cost, for fraud bench: the clicks were made beforehand.
        print(orjson.dumps({"sent": sent, "send_cpu_s": time.process_time() - cpu_before,
                            "send_s": time.monotonic() - started}).decode(), flush=True)
    log.info("generator stopped", sent=sent)
    return 0


def pregenerated(seed: int, total: int | None, event_rate: float = 20_000.0) -> Iterator[tuple[Click, str]]:
    """A finite trace made up front, on an event-time clock running at ``event_rate`` clicks/s."""
    if total is None:
        raise FraudError("--pregenerate needs --total")
    start = wall_clock_ms()
    ticks = iter(range(total * 20))
    clock: Clock = lambda: start + int(next(ticks) * 1000 / event_rate)  # noqa: E731
    # A large pool of humans, so that the flat-out rate does not make every human a spammer.
    return iter(list(itertools.islice(traffic(seed, clock, TrafficMix(humans=500_000)), total)))
