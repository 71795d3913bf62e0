"""``fraud cluster start|stop|status``: a local Redis Cluster of embedded Redis Stack nodes;
``fraud cluster move``: a partition to another master of any cluster, while the pipeline runs."""

from __future__ import annotations

import argparse
from urllib.parse import urlsplit

import redis

from pipeline.cli.args import non_negative_int
from pipeline.client.connection import redis_py_tls
from pipeline.core.settings import Settings
from pipeline.dev.cluster import LocalCluster
from pipeline.dev.credentials import DEFAULT_PORT
from pipeline.dev.stack import ServerError
from pipeline.ops.reshard import ReshardError, move_partition

NOT_RUNNING_EXIT = 3


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cluster", help="run a local Redis Cluster of embedded Redis Stack nodes (from FRAUD_REDIS_URL's port up); "
        "each master serves the slots of an even share of the FRAUD_PARTITIONS partitions")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=type(parser))
    start = actions.add_parser("start", help="start and join the nodes (a no-op for nodes that run)")
    start.add_argument("--shards", type=int, default=3, help="masters, at least 3 (default 3)")
    start.add_argument("--replicas", type=int, choices=(0, 1), default=0, help="replicas per master (default 0)")
    start.set_defaults(run=_start)
    actions.add_parser("stop", help="stop every node of the recorded cluster").set_defaults(run=_stop)
    actions.add_parser("status", help="each node's role, slots and state; exit 3 if a node is down"
                       ).set_defaults(run=_status)
    move = actions.add_parser(
        "move", help="move a partition's slot to another master of the cluster at FRAUD_REDIS_URL while the "
        "pipeline runs (the slot's keys in one MIGRATE), then TIMESERIES.REFRESHCLUSTER on every node")
    move.add_argument("--partition", type=non_negative_int, required=True, help="the partition to move")
    move.add_argument("--to", required=True, metavar="HOST:PORT", help="the master to move it to, as the cluster "
                      "knows it (`fraud cluster status`, CLUSTER NODES)")
    move.set_defaults(run=_move)


def _start(args: argparse.Namespace, settings: Settings) -> int:
    parts = urlsplit(settings.redis_url)
    if parts.hostname not in ("127.0.0.1", "localhost"):
        raise ServerError(f"a local cluster serves 127.0.0.1 only, not {parts.hostname} in FRAUD_REDIS_URL")
    recorded = LocalCluster.recorded(settings.home)
    cluster = LocalCluster.with_ports(settings.home, parts.port or DEFAULT_PORT, args.shards, args.replicas,
                                      partitions=settings.partitions, namespace=settings.namespace)
    if recorded is not None and recorded.nodes != cluster.nodes and any(recorded.pids()):
        raise ServerError(f"another cluster runs from {settings.home} (ports "
                          f"{', '.join(str(n.port) for n in recorded.nodes)}): `fraud cluster stop` it first")
    cluster.start()
    _show(cluster)
    return 0


def _stop(args: argparse.Namespace, settings: Settings) -> int:
    cluster = LocalCluster.recorded(settings.home)
    if cluster is None:
        print(f"no cluster was started from {settings.home}")
        return 0
    pids = cluster.pids()
    cluster.stop()
    print("stopped: " + ", ".join(f"{n.port} (pid {pid})" for n, pid in zip(cluster.nodes, pids, strict=True)
                                  if pid is not None) or "nothing ran")
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    cluster = LocalCluster.recorded(settings.home)
    if cluster is None:
        print(f"no cluster was started from {settings.home}")
        return NOT_RUNNING_EXIT
    rows = _show(cluster)
    return 0 if all(row["state"] == "ok" for row in rows) else NOT_RUNNING_EXIT


def _move(args: argparse.Namespace, settings: Settings) -> int:
    if args.partition >= settings.partitions:
        raise ReshardError(f"no partition {args.partition}: FRAUD_PARTITIONS is {settings.partitions}")
    tls = redis_py_tls(settings) if settings.redis_url.startswith("rediss:") else {}
    try:
        done = move_partition(settings.redis_url, args.partition, args.to, tls)
    except redis.RedisError as err:
        raise ReshardError(f"partition {args.partition} was not moved: {err}") from None
    if done.moved:
        print(f"partition {done.partition} (slot {done.slot}, {done.keys} keys) moved from {done.source} to "
              f"{done.target}")
    else:
        print(f"partition {done.partition} (slot {done.slot}) is already on {done.target}")
    print(f"TIMESERIES.REFRESHCLUSTER run on {done.refreshed} node(s)")
    return 0


def _show(cluster: LocalCluster) -> list[dict[str, str]]:
    rows = cluster.status()
    print(f"{cluster.shards} shards, {cluster.replicas} replica(s) each, data under {cluster.home}")
    for row in rows:
        print(f"  127.0.0.1:{row['port']:<6} pid {row['pid']:<8} {row['role']:<8} {row['state']:<6} "
              f"slots {row['slots']}")
    return rows
