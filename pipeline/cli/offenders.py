"""``fraud offenders``: the top devices or addresses by flagged clicks over the last minutes, read
from every partition (one call each, on its own node) and added up: exact as the buckets are, on one
server or a cluster, as fresh as the aggregator (the dashboard reads the monitor's merge)."""

from __future__ import annotations

import argparse
import sys

import orjson

from pipeline.cli.args import positive_int
from pipeline.client.connection import open_fast_client
from pipeline.client.partitioning import agree_partitions
from pipeline.core.keys import OFFENDER_DIMENSIONS, Keys
from pipeline.core.settings import Settings
from pipeline.ops.groups import server_time_ms
from pipeline.ops.offenders import FLAGGED, read_offenders
from pipeline.ops.status_table import table

MINUTE_MS = 60_000


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "offenders", help="the top devices or IPs by flagged clicks, over every partition")
    parser.add_argument("--by", choices=OFFENDER_DIMENSIONS, default="device_id", help="default device_id")
    parser.add_argument("--minutes", type=positive_int, default=60, metavar="N",
                        help="event times of the last N minutes by the server's clock (default 60)")
    parser.add_argument("--limit", type=positive_int, default=10, metavar="N", help="rows (default 10)")
    parser.add_argument("--json", action="store_true", help="one JSON document per row")
    parser.set_defaults(run=_offenders)


async def _offenders(args: argparse.Namespace, settings: Settings) -> int:
    client = await open_fast_client(settings)
    try:
        partitions = await agree_partitions(client.execute, Keys(settings.namespace), settings.partitions,
                                            record=False)
        now_ms = await server_time_ms(client)
        rows = await read_offenders(client, settings, args.by, now_ms - args.minutes * MINUTE_MS, now_ms,
                                    args.limit, partitions)
    finally:
        await client.close()
    if args.json:
        sys.stdout.write("".join(orjson.dumps(row).decode() + "\n" for row in rows))
    else:
        columns = (args.by, "flagged clicks", *FLAGGED)
        print("\n".join(table([c.upper() for c in columns], [[row[c] for c in columns] for row in rows])))
    return 0
