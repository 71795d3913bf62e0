"""``fraud bench``: end-to-end throughput, latency and CPU per click."""

from __future__ import annotations

import argparse

from pipeline.cli.args import non_negative_float, positive_float, positive_int
from pipeline.core.settings import Settings
from pipeline.dev.bench import _bench, bench_server


async def run_bench(args: argparse.Namespace, settings: Settings) -> int:
    with bench_server(settings, args.use_running, aof=not args.no_aof) as bench_settings:
        return await _bench(args, bench_settings)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="measure end-to-end throughput, latency and CPU")
    parser.add_argument("--clicks", type=positive_int, default=200_000, help="clicks to push through")
    parser.add_argument("--detectors", type=positive_int, default=2)
    parser.add_argument("--aggregators", type=positive_int, default=1)
    parser.add_argument("--routers", type=positive_int, default=1,
                        help="router agents (one routes at a time; more are stand-bys)")
    parser.add_argument("--direct", action="store_true",
                        help="the producer writes into the partitions itself, no router (the producer API)")
    parser.add_argument("--rate", type=non_negative_float, default=0.0,
                        help="offered load in clicks/s (default 0: flat out, which measures throughput; "
                             "a rate below it measures latency at that load)")
    parser.add_argument("--timeout", type=positive_float, default=600.0, help="seconds before giving up")
    parser.add_argument("--use-running", action="store_true",
                        help="use the Redis at FRAUD_REDIS_URL instead of a fresh embedded one")
    parser.add_argument("--no-aof", action="store_true",
                        help="run the embedded server without its append-only file (no persistence)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(run=run_bench)
