"""Synthetic click traffic with the patterns the detector must tell apart.

Humans click now and then from a large pool of devices; bots fire bursts from
one device; some clicks come from blacklisted IPs; producers retry (the same
click again); a few entries are malformed. Every click carries a ``label``
saying which pattern made it, so a trace can be checked against the verdicts.
"""

from __future__ import annotations

import argparse
import asyncio
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


@dataclass(frozen=True)
class TrafficMix:
    human: float = 0.86
    bot_burst: float = 0.04
    blacklisted: float = 0.05
    retry: float = 0.03
    malformed: float = 0.02
    humans: int = 20_000
    bots: int = 50
    burst_min: int = 3
    burst_max: int = 12


Clock = Callable[[], int]
Click = list[str]

MALFORMED: tuple[Callable[[random.Random, int], Click], ...] = (
    lambda r, ts: ["ip", "198.51.100.7", "ts", str(ts)],
    lambda r, ts: ["device_id", f"dev-{r.randrange(10**6)}", "ip", "300.1.2.3", "ts", str(ts)],
    lambda r, ts: ["device_id", f"dev-{r.randrange(10**6)}", "ip", "198.51.100.7", "ts", "yesterday"],
    lambda r, ts: ["device_id", "", "ip", "198.51.100.7", "ts", str(ts)],
    lambda r, ts: ["device_id", "x" * 200, "ip", "198.51.100.7"],
)


def traffic(seed: int, clock: Clock, mix: TrafficMix = TrafficMix()) -> Iterator[tuple[Click, str]]:
    """An endless labelled stream of clicks (fields, label); event time comes from ``clock``."""
    rng = random.Random(seed)
    bad_ips = blacklisted_ips()
    recent: deque[Click] = deque(maxlen=1000)
    weights = (mix.human, mix.bot_burst, mix.blacklisted, mix.retry, mix.malformed)
    kinds = ("human", "bot_burst", "blacklisted", "retry", "malformed")
    serial = 0
    while True:
        kind = rng.choices(kinds, weights)[0]
        ts = clock()
        if kind == "retry" and recent:
            yield list(rng.choice(recent)), "retry"
            continue
        if kind == "malformed":
            yield rng.choice(MALFORMED)(rng, ts), "malformed"
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


def _click(device: str, ip: str, transaction_id: str, ts: int) -> Click:
    record = ClickRecord(device_id=device, ip=ip, ts=ts, transaction_id=transaction_id,
                         extra={"campaign": f"c{zlib.crc32(device.encode()) % 17}"})
    return record.wire_fields()


def _random_ip(rng: random.Random) -> str:
    if rng.random() < 0.15:
        return str(ipaddress.IPv6Address((0x2001_0DB8 << 96) | rng.getrandbits(64)))
    return f"{rng.randint(1, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randint(1, 254)}"


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


Destination = Callable[[Click], str]


async def produce(client: RespClient, stream: str | Destination, clicks: Iterator[tuple[Click, str]], *,
                  rate: float, total: int | None, stop: asyncio.Event, batch: int = 200) -> int:
    """XADD clicks in pipelined batches, at ``rate`` per second (0: as fast as Redis takes them), to
    one stream or to the stream a function names for each click (its partition's input)."""
    destination: Destination = (lambda _: stream) if isinstance(stream, str) else stream
    sent = 0
    started = time.monotonic()
    if rate > 0:
        # About ten sends a second: smooth at demo rates, still batched at high ones.
        batch = max(1, min(batch, int(rate / 10)))
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
        sent = await produce(client, destination, clicks, rate=args.rate, total=args.total, stop=stop)
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
