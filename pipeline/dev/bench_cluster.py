"""``fraud bench --cluster N``: the pipeline on a local Redis Cluster of its own, beside one server.

Each run starts a fresh cluster of N masters (and a replica each with ``--replicas 1``) on free
ports under a temporary folder, with AOF as the one-server bench, loads the function library on
every master, runs ``measure`` through the first master (the agents find the others), and stops
every node by its pid, also when the run fails or is interrupted. The same number of runs on one
fresh server takes turns with the cluster's (cluster, one server, cluster, ...), so that
"total Redis CPU per click on the cluster against one server" compares runs of the same minutes
on the same machine. Reported per design: the median and min-max of clicks/s and of Redis CPU per
click; for the cluster, each shard's (by what it serves) Redis CPU per click, share and memory.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import redis

from pipeline.client.functions import library_source
from pipeline.core.settings import Settings
from pipeline.dev.bench import bench_server, measure
from pipeline.dev.bench_compare import figure, progress, spread
from pipeline.dev.bench_report import print_shards
from pipeline.dev.cluster import LocalCluster, NodeAddress

ONE_SERVER = "one server"
CLUSTER = "cluster"


@contextmanager
def bench_cluster(settings: Settings, shards: int, replicas: int, aof: bool = True) -> Iterator[Settings]:
    """A fresh local cluster for one run, the library loaded; the settings point at its first master."""
    with local_bench_cluster(settings, shards, replicas, aof) as (_, cluster_settings):
        yield cluster_settings


@contextmanager
def local_bench_cluster(settings: Settings, shards: int, replicas: int,
                        aof: bool = True) -> Iterator[tuple[LocalCluster, Settings]]:
    """``bench_cluster``, with the cluster itself (for a drill that kills a node of it)."""
    with tempfile.TemporaryDirectory(prefix="fraud-bench-cluster-") as home:
        nodes = NodeAddress.free(shards * (1 + replicas))
        cluster = LocalCluster(Path(home), nodes, replicas, libssl_dir=settings.home / "libssl",
                               appendfsync=settings.appendfsync, partitions=settings.partitions,
                               namespace=settings.namespace)
        try:
            cluster.start()
            for index, url in enumerate(cluster.urls):
                with redis.Redis.from_url(url) as admin:
                    if index < cluster.shards:  # the set-up step (`fraud setup`) on every master
                        admin.function_load(library_source(), replace=True)
                    if not aof:
                        admin.config_set("appendonly", "no")
            cluster.wait_replicas_in_sync(timeout=30)
            yield cluster, replace(settings, redis_url=cluster.urls[0], home=Path(home))
        finally:
            # Each node by its pid file, whatever happened (a failed start stops the nodes that ran).
            cluster.stop()


@dataclass(frozen=True)
class ClusterRun:
    design: str
    round: int
    report: dict[str, Any]
    load_before: float


async def compare_with_cluster(args: argparse.Namespace, settings: Settings) -> int:
    runs: list[ClusterRun] = []
    total = 2 * args.repeat
    for round_ in range(args.repeat):
        for design in (CLUSTER, ONE_SERVER):
            progress(f"run {len(runs) + 1}/{total}: {design}"
                      + (f" of {args.cluster} masters, {args.replicas} replica(s) each" if design == CLUSTER else ""))
            load_before = os.getloadavg()[0]
            opened = (bench_cluster(settings, args.cluster, args.replicas, aof=not args.no_aof) if design == CLUSTER
                      else bench_server(settings, False, aof=not args.no_aof))
            with opened as run_settings:
                report = await measure(args, run_settings)
            runs.append(ClusterRun(design, round_, report, load_before))
    summary = summarise(runs)
    if args.json:
        print(orjson.dumps({"shards": args.cluster, "replicas": args.replicas, "repeat": args.repeat,
                            "runs": [{"design": r.design, "round": r.round, "load_before": r.load_before,
                                      "report": r.report} for r in runs],
                            "summary": summary}).decode())
    else:
        print_summary(args, runs, summary)
    return 0


def summarise(runs: list[ClusterRun]) -> dict[str, Any]:
    """Per design, clicks/s and Redis CPU per click; the cluster's against one server's (medians);
    the largest share any shard took in any run (the issue asks at most 40 % with 3 shards)."""
    designs = {design: [r for r in runs if r.design == design] for design in (ONE_SERVER, CLUSTER)}
    summary: dict[str, Any] = {
        design: {"runs": len(group),
                 "clicks_per_s": spread([float(r.report["clicks_per_s"]) for r in group]),
                 "redis_cpu_us_per_click": spread([float(r.report["cpu_us_per_click"]["redis"]) for r in group]),
                 "persistence": " / ".join(sorted({r.report["persistence"] for r in group}))}
        for design, group in designs.items()}
    one = summary[ONE_SERVER]["redis_cpu_us_per_click"]["median"]
    summary["cluster_over_one_server_redis_cpu"] = (
        round(summary[CLUSTER]["redis_cpu_us_per_click"]["median"] / one, 3) if one else None)
    summary["largest_shard_share_pct"] = max(row["share_pct"] for r in designs[CLUSTER]
                                             for row in r.report["redis_shards"].values())
    return summary


def print_summary(args: argparse.Namespace, runs: list[ClusterRun], summary: dict[str, Any]) -> None:
    entry = "written into the partitions (direct)" if args.direct else f"{args.routers} router(s)"
    print(f"{args.clicks} clicks a run, {entry}, {args.detectors} detector(s), {args.aggregators} aggregator(s); "
          f"median (min-max) of {args.repeat} run(s) each, one server and a {args.cluster}-master cluster "
          f"({args.replicas} replica(s) each) taking turns")
    for design in (ONE_SERVER, CLUSTER):
        row = summary[design]
        print(f"  {design:<10}  {figure(row['clicks_per_s'], 0)} clicks/s  "
              f"Redis CPU {figure(row['redis_cpu_us_per_click'], 1)} us/click  Redis {row['persistence']}")
    ratio = summary["cluster_over_one_server_redis_cpu"]
    print(f"total Redis CPU per click, cluster / one server (medians): {ratio:.2f}x" if ratio is not None
          else "total Redis CPU per click, cluster / one server: n/a")
    for run in runs:
        if run.design == CLUSTER:
            print(f"cluster run {run.round + 1}: {run.report['clicks_per_s']:,} clicks/s, "
                  f"{run.report['cpu_us_per_click']['redis']} us/click of Redis CPU in all")
            print_shards(run.report["redis_shards"])
    print(f"largest shard share: {summary['largest_shard_share_pct']} %")
    loads = [run.load_before for run in runs]
    print(f"load average (1 min) as the runs began: {min(loads):.2f}-{max(loads):.2f}")
