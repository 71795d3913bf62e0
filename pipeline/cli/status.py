"""``fraud status``: the table, ``--json``, ``--watch`` and the ``--max-*`` health checks."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable
from typing import Any

import orjson
import redis.asyncio as aioredis

from pipeline.cli.args import non_negative_float, non_negative_int, positive_float
from pipeline.client.outage import Outage, error_text, is_unavailable
from pipeline.core.errors import RedisUnavailableError
from pipeline.core.keys import Keys
from pipeline.core.log import redact_url
from pipeline.core.settings import Settings
from pipeline.core.signals import release_signals, stop_on_signals
from pipeline.core.units import duration
from pipeline.core.waiting import wait_or_stop
from pipeline.ops.status import THRESHOLD_EXIT, breaches, open_status_client, read_stats, snapshot
from pipeline.ops.status_table import render


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status", help="show streams, groups, lag, throughput and dead letters",
        description="Show the pipeline's health as Redis sees it. Exit status: 0 healthy, 1 Redis "
                    f"unreachable, 2 bad arguments, {THRESHOLD_EXIT} a --max-* threshold exceeded.")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument("--watch", nargs="?", const=2.0, default=None, type=positive_float,
                        metavar="SECONDS", help="refresh every SECONDS (default 2) until Ctrl-C")
    parser.add_argument("--interval", type=non_negative_float, default=1.0, metavar="SECONDS",
                        help="measure throughput over this long (default 1, 0 to skip)")
    parser.add_argument("--max-lag", type=non_negative_int, metavar="N",
                        help=f"exit {THRESHOLD_EXIT} if any group's lag exceeds N")
    parser.add_argument("--max-pending", type=non_negative_int, metavar="N",
                        help=f"exit {THRESHOLD_EXIT} if any group has more than N pending entries")
    parser.add_argument("--max-dead", type=non_negative_int, metavar="N",
                        help=f"exit {THRESHOLD_EXIT} if there are more than N dead letters")
    parser.set_defaults(run=run_status)


async def run_status(args: argparse.Namespace, settings: Settings) -> int:
    client = await open_status_client(settings)
    keys = Keys(settings.namespace)
    try:
        if args.watch is None:
            return await _report_once(client, keys, args, settings)
        return await _watch(client, keys, args, settings)
    finally:
        await client.aclose()


def _show(snap: dict[str, Any], args: argparse.Namespace, settings: Settings) -> list[str]:
    if args.json:
        sys.stdout.write(orjson.dumps(snap).decode() + "\n")
    else:
        sys.stdout.write(render(snap, redact_url(settings.redis_url)) + "\n")
    sys.stdout.flush()
    lines = breaches(snap, args.max_lag, args.max_pending, args.max_dead)
    for line in lines:
        print(f"fraud status: {line}", file=sys.stderr)
    return lines


async def _report_once(client: aioredis.Redis, keys: Keys, args: argparse.Namespace, settings: Settings) -> int:
    try:
        previous = None
        if args.interval > 0:
            previous = await read_stats(client, keys, settings.partitions)
            await asyncio.sleep(args.interval)
        snap = await snapshot(client, keys, previous, partitions=settings.partitions, shards=True)
    except Exception as err:
        if not is_unavailable(err):
            raise
        raise RedisUnavailableError(f"lost Redis at {redact_url(settings.redis_url)}: {error_text(err)}") from err
    return THRESHOLD_EXIT if _show(snap, args, settings) else 0


async def _watch(client: aioredis.Redis, keys: Keys, args: argparse.Namespace, settings: Settings) -> int:
    stop = stop_on_signals()
    # Clear and redraw on a terminal; a log file or pipe gets one block per refresh instead.
    redraw = sys.stdout.isatty() and not args.json
    outage = Outage()
    where = redact_url(settings.redis_url)

    async def attempt(reading: Awaitable[dict[str, Any]]) -> dict[str, Any] | None:
        """The reading, or None (and a line on stderr) while Redis is unavailable: a watch outlives a restart."""
        result = await outage.read(reading)
        if result is None:
            print(f"fraud status: Redis at {where} {outage.describe()}", file=sys.stderr, flush=True)
        elif outage.ended_after_ms is not None:
            print(f"fraud status: Redis at {where} reachable again after {duration(outage.ended_after_ms)}",
                  file=sys.stderr, flush=True)
        return result

    previous: dict[str, Any] | None = None
    try:
        if args.interval > 0:
            previous = await attempt(read_stats(client, keys, settings.partitions))
            await wait_or_stop(stop, args.interval)
        while not stop.is_set():
            snap = await attempt(snapshot(client, keys, previous, partitions=settings.partitions, shards=True))
            if snap is not None:
                if redraw:
                    sys.stdout.write("\x1b[2J\x1b[H")
                _show(snap, args, settings)
                previous = snap
            await wait_or_stop(stop, args.watch)
    finally:
        release_signals()
    return 0
