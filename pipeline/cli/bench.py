"""``fraud bench``: end-to-end throughput, latency and CPU per click."""

from __future__ import annotations

import argparse

import orjson

from pipeline.cli.args import non_negative_float, positive_float, positive_int
from pipeline.core.errors import FraudError
from pipeline.core.settings import Settings
from pipeline.dev.bench import _bench, bench_server
from pipeline.dev.bench_cluster import compare_with_cluster
from pipeline.dev.bench_compare import compare
from pipeline.dev.breakdown import breakdown_runs, print_runs
from pipeline.dev.cluster import MIN_MASTERS
from pipeline.dev.failover_drill import failover_drill, print_drill

DEFAULT_REPEAT = 3


class BenchUsageError(FraudError):
    """Options that do not go together: a bad argument, hence status 2."""

    exit_code = 2


async def run_bench(args: argparse.Namespace, settings: Settings) -> int:
    with bench_server(settings, args.use_running, aof=not args.no_aof, own_namespace=True) as bench_settings:
        return await _bench(args, bench_settings)


async def run_breakdown(args: argparse.Namespace, settings: Settings) -> int:
    runs = await breakdown_runs(settings, args.clicks, args.direct, args.use_running)
    if args.json:
        print(orjson.dumps(runs).decode())
    else:
        print_runs(runs)
    return 0


def run(args: argparse.Namespace, settings: Settings) -> object:
    if args.breakdown:
        return run_breakdown(args, settings)
    if args.cluster is not None:
        return run_cluster(args, settings)
    if args.replicas or args.failover_drill:
        raise BenchUsageError("--replicas and --failover-drill are a cluster's: they need --cluster")
    if args.baseline is None:
        if args.compare_detectors is not None or args.repeat is not None or args.with_direct:
            raise BenchUsageError("--compare-detectors, --repeat and --with-direct compare designs: "
                                  "they need --baseline")
        return run_bench(args, settings)
    if args.use_running:
        raise BenchUsageError("--baseline runs each design on a fresh embedded server: drop --use-running")
    args.repeat = DEFAULT_REPEAT if args.repeat is None else args.repeat
    return compare(args, settings.home)


def run_cluster(args: argparse.Namespace, settings: Settings) -> object:
    if args.cluster < MIN_MASTERS:
        raise BenchUsageError(f"--cluster {args.cluster}: Redis Cluster needs at least {MIN_MASTERS} masters")
    if args.use_running or args.baseline is not None or args.compare_detectors is not None or args.with_direct:
        raise BenchUsageError("--cluster starts a cluster and one server of its own and compares them: drop "
                              "--use-running, --baseline, --compare-detectors and --with-direct")
    args.repeat = 1 if args.repeat is None else args.repeat
    if args.failover_drill:
        if args.replicas != 1 or args.direct:
            raise BenchUsageError("--failover-drill kills a master for its replica to take over: it needs "
                                  "--replicas 1, and goes through clicks:raw (no --direct)")
        return run_drill(args, settings)
    return compare_with_cluster(args, settings)


async def run_drill(args: argparse.Namespace, settings: Settings) -> int:
    runs = await failover_drill(args, settings)
    if args.json:
        print(orjson.dumps(runs).decode())
    else:
        print_drill(runs, args.clicks)
    return 0


def detector_counts(text: str) -> list[int]:
    """``1,2``: the detector counts to compare at, each a positive whole number."""
    return [positive_int(part.strip()) for part in text.split(",")]


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
    parser.add_argument("--sends", type=positive_float, default=None,
                        help="the producer's pipelined sends a second at --rate (default: its own, ten, "
                             "of at most 200 clicks each)")
    parser.add_argument("--timeout", type=positive_float, default=600.0, help="seconds before giving up")
    parser.add_argument("--use-running", action="store_true",
                        help="use the Redis at FRAUD_REDIS_URL instead of a fresh embedded one, in a "
                             "namespace of its own (FRAUD_NAMESPACE-bench), which each run clears first")
    parser.add_argument("--no-aof", action="store_true",
                        help="run the embedded server without its append-only file (no persistence)")
    parser.add_argument("--baseline", metavar="GIT_REF",
                        help="also bench this commit of the repository (checked out aside), alternating "
                             "runs with the current tree, and print both side by side")
    parser.add_argument("--compare-detectors", type=detector_counts, metavar="N[,N...]",
                        help="with --baseline: the detector counts to compare at (default: --detectors)")
    parser.add_argument("--repeat", type=positive_int, metavar="N",
                        help=f"with --baseline: runs of each design per detector count (default {DEFAULT_REPEAT}); "
                             "with --cluster: runs of each design (default 1)")
    parser.add_argument("--breakdown", action="store_true",
                        help="where Redis's CPU goes: each stage alone, per command, the Lua overhead of each "
                             "step, with AOF and without (needs no other option; --clicks, --direct apply)")
    parser.add_argument("--with-direct", action="store_true",
                        help="with --baseline: also run the current tree with --direct, as a third design")
    parser.add_argument("--cluster", type=positive_int, metavar="N",
                        help="run on a local Redis Cluster of N masters (at least 3) of its own, taking turns with "
                             "runs on one server (--repeat times each, default 1), and report each shard's Redis CPU "
                             "per click, share and memory, and the cluster's total Redis CPU per click against "
                             "one server's; every node is stopped afterwards")
    parser.add_argument("--replicas", type=int, choices=(0, 1), default=0,
                        help="with --cluster: replicas per master (default 0)")
    parser.add_argument("--failover-drill", action="store_true",
                        help="with --cluster N --replicas 1: instead of the comparison, SIGKILL a master mid-flow "
                             "(writes not paused), once the one of clicks:raw and once another, --repeat times, and "
                             "count what the failover lost or repeated")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(run=run)
