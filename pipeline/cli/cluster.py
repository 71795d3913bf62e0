"""``fraud cluster start|stop|status``: a local Redis Cluster of embedded Redis Stack nodes."""

from __future__ import annotations

import argparse
from urllib.parse import urlsplit

from pipeline.core.settings import Settings
from pipeline.dev.cluster import LocalCluster
from pipeline.dev.credentials import DEFAULT_PORT
from pipeline.dev.stack import ServerError

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


def _show(cluster: LocalCluster) -> list[dict[str, str]]:
    rows = cluster.status()
    print(f"{cluster.shards} shards, {cluster.replicas} replica(s) each, data under {cluster.home}")
    for row in rows:
        print(f"  127.0.0.1:{row['port']:<6} pid {row['pid']:<8} {row['role']:<8} {row['state']:<6} "
              f"slots {row['slots']}")
    return rows
