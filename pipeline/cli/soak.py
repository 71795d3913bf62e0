"""``fraud soak``: many clicks through short retention; memory must stay flat."""

from __future__ import annotations

import argparse

import orjson

from pipeline.cli.args import non_negative_float, positive_float, positive_int
from pipeline.core.settings import Settings
from pipeline.dev.bench import bench_server
from pipeline.dev.soak import soak


async def run_soak(args: argparse.Namespace, settings: Settings) -> int:
    with bench_server(settings, use_running=args.use_running) as soak_settings:
        result = await soak(soak_settings, args.clicks, args.rate, timeout=args.timeout)
    summary = result.summary()
    if args.json:
        print(orjson.dumps(summary).decode())
        return 0
    mib = 2**20
    print(f"{result.clicks} clicks in {summary['seconds']} s ({summary['clicks_per_s']:,} clicks/s)")
    print(f"Redis memory: empty {result.baseline_memory / mib:.1f} MiB, after warm-up "
          f"{summary['memory_after_warm_up_bytes'] / mib:.1f} MiB, peak {summary['memory_peak_bytes'] / mib:.1f} MiB, "
          f"end {result.end_memory / mib:.1f} MiB")
    print(f"slope after warm-up: {summary['slope_bytes_per_100k_clicks'] / 1024:+.1f} KiB per 100k clicks")
    print(f"bytes per click in flight: {summary['bytes_per_click_in_flight']:.0f}")
    print("stream lengths at the end: " + ", ".join(f"{k} {v}" for k, v in result.stream_lengths.items())
          + f"; device windows {result.window_keys}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("soak", help="run many clicks through short retention and watch memory")
    parser.add_argument("--clicks", type=positive_int, default=1_000_000, help="clicks to push through")
    parser.add_argument("--rate", type=non_negative_float, default=10_000.0, help="clicks per second, 0 for flat out")
    parser.add_argument("--timeout", type=positive_float, default=1800.0, help="seconds before giving up")
    parser.add_argument("--use-running", action="store_true",
                        help="soak the Redis of FRAUD_REDIS_URL (a server or a cluster) instead of a fresh server")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(run=run_soak)
