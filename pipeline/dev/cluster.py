"""A local Redis Cluster from the embedded Redis Stack binaries, for development, tests and benchmarks.

Each node is an ``EmbeddedRedis`` (the same daemon, modules and libssl as ``fraud server``) started
with ``--cluster-enabled yes``; its cluster config (``nodes-<port>.conf``), append-only file and log
live in its own ``<home>/redis-<port>`` folder. The nodes are joined once, by hand rather than with
``redis-cli --cluster create``: its equal slot ranges put the partitions' hash tags unevenly on the
masters (with 8 partitions on 3 masters one gets 4), so each master is given the slots of an even
share of the partitions (``partition_slots``), the keys outside the partitions (``clicks:raw``
first: every click's ``XADD`` and the router's reads) go to a master with the fewest partitions,
and the rest of the slots in ranges. A restarted node
finds its cluster again from its config file.
The layout (ports, replicas) is recorded in ``<home>/cluster.json`` so that ``stop`` and
``status`` need no arguments.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from pipeline.dev.ports import free_ports
from pipeline.dev.server import EmbeddedRedis
from pipeline.dev.slot_placement import partition_slots, slot_ranges, unpartitioned_keys
from pipeline.dev.stack import ServerError
from pipeline.ops.timeseries_cluster import refresh_timeseries

LAYOUT_FILE = "cluster.json"
# How long a node may not answer before the others mark it failed (and a replica takes over):
# short, so that a failover test ends in seconds; Redis's own default is 15 s.
NODE_TIMEOUT_MS = 2000
# Redis's own convention: a node's cluster bus listens on its port + 10000.
BUS_OFFSET = 10_000
# Redis Cluster's own minimum of masters (fewer cannot agree on a failover).
MIN_MASTERS = 3


@dataclass(frozen=True)
class NodeAddress:
    port: int
    bus_port: int

    @staticmethod
    def free(count: int) -> list[NodeAddress]:
        """`count` nodes' addresses on ports free right now, all distinct."""
        ports = free_ports(2 * count)
        return [NodeAddress(port, bus_port) for port, bus_port in zip(ports[::2], ports[1::2], strict=True)]


class LocalCluster:
    """``shards`` masters, each with ``replicas`` replicas, on 127.0.0.1."""

    def __init__(self, home: Path, nodes: list[NodeAddress], replicas: int = 0, libssl_dir: Path | None = None,
                 appendfsync: str = "everysec", host: str = "127.0.0.1", partitions: int = 8,
                 namespace: str = "clicks") -> None:
        if replicas not in (0, 1):
            raise ServerError(f"a local cluster has 0 or 1 replica per shard, not {replicas}")
        if len(nodes) % (1 + replicas) or len(nodes) // (1 + replicas) < MIN_MASTERS:
            raise ServerError(f"Redis Cluster needs at least {MIN_MASTERS} masters: {len(nodes)} nodes with {replicas} "
                              f"replica(s) each make {len(nodes) // (1 + replicas)}")
        self.home = Path(home).resolve()
        self.nodes = nodes
        self.replicas = replicas
        self.host = host
        self.partitions = partitions
        self.namespace = namespace
        self.servers = [
            EmbeddedRedis(self.home, n.port, appendfsync=appendfsync, host=host, libssl_dir=libssl_dir,
                          extra_args=("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{n.port}.conf",
                                      "--cluster-port", str(n.bus_port),
                                      "--cluster-node-timeout", str(NODE_TIMEOUT_MS)))
            for n in nodes]

    @classmethod
    def with_ports(cls, home: Path, first_port: int, shards: int, replicas: int = 0, **options: object) -> LocalCluster:
        """Nodes on consecutive ports from ``first_port`` (the masters first), buses 10000 above."""
        ports = range(first_port, first_port + shards * (1 + replicas))
        return cls(home, [NodeAddress(p, p + BUS_OFFSET) for p in ports], replicas, **options)  # type: ignore[arg-type]

    @classmethod
    def recorded(cls, home: Path, **options: object) -> LocalCluster | None:
        """The cluster last started under ``home``, or None when none was."""
        try:
            layout = json.loads((Path(home) / LAYOUT_FILE).read_text())
        except FileNotFoundError:
            return None
        nodes = [NodeAddress(int(n["port"]), int(n["bus_port"])) for n in layout["nodes"]]
        return cls(home, nodes, int(layout["replicas"]), **options)  # type: ignore[arg-type]

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    @property
    def shards(self) -> int:
        return len(self.nodes) // (1 + self.replicas)

    def pids(self) -> list[int | None]:
        return [server.pid for server in self.servers]

    def start(self, timeout: float = 30) -> None:
        """Start every node, join them once, and return when every node sees the cluster ``ok``."""
        self.home.mkdir(parents=True, exist_ok=True)
        self._record()
        for server in self.servers:
            server.start(timeout=timeout)
        if not self._formed():
            self._create(timeout)
        self.wait_ok(timeout)
        self.refresh_timeseries()

    def stop(self) -> None:
        # Each by its pid file: SIGTERM first, so each node writes its AOF and cluster config.
        for server in self.servers:
            server.stop()

    def wait_ok(self, timeout: float) -> None:
        """Until every node answers ``cluster_state:ok`` and knows every other node; fail saying which did not."""
        deadline = time.monotonic() + timeout
        while True:
            waiting = [f"{s.port}: {state}" for s in self.servers if (state := self._node_state(s)) != "ok"]
            if not waiting:
                return
            if time.monotonic() >= deadline:
                raise ServerError(f"the cluster did not become ok within {timeout:.0f} s: " + "; ".join(waiting))
            time.sleep(0.1)

    def wait_replicas_in_sync(self, timeout: float) -> None:
        """Until every replica's link to its master is up (its first full copy done)."""
        deadline = time.monotonic() + timeout
        while True:
            lagging = [s.port for s in self.servers[self.shards:] if _replication(s).get("master_link_status") != "up"]
            if not lagging:
                return
            if time.monotonic() >= deadline:
                raise ServerError(f"replicas {lagging} did not sync with their masters within {timeout:.0f} s")
            time.sleep(0.05)

    def replica_of(self, master: EmbeddedRedis) -> EmbeddedRedis:
        """The replica started for ``master`` (``REPLICATE`` in turn: the i-th replica follows the
        i-th master, as long as no failover has swapped them)."""
        return self.servers[self.shards + self.servers.index(master) % self.shards]

    def refresh_timeseries(self) -> None:
        """Tell every node's RedisTimeSeries the cluster's current shape: until it is told, its
        ``TS.MRANGE``/``TS.MGET``/``TS.QUERYINDEX`` silently answer from the node's own shard only
        (measured on this Redis Stack's module). Again after any resharding or failover."""
        refresh_timeseries(self.urls)

    def status(self) -> list[dict[str, str]]:
        """One row per node: port, pid, role, the slots it serves, its state."""
        rows = []
        for server in self.servers:
            row = {"port": str(server.port), "pid": str(server.pid or "-"), "state": "down", "role": "-",
                   "slots": "-"}
            if server.pid is not None:
                try:
                    with _client(server) as client:
                        info = client.execute_command("CLUSTER", "INFO").decode()
                        myself = next(line for line in client.execute_command("CLUSTER", "NODES").decode().splitlines()
                                      if "myself" in line.split()[2])
                    fields = myself.split()
                    row["state"] = _info_field(info, "cluster_state") or "?"
                    row["role"] = "master" if "master" in fields[2] else "replica"
                    row["slots"] = " ".join(fields[8:]) or "-"
                except (redis.RedisError, StopIteration) as err:
                    row["state"] = f"unknown ({err})"
            rows.append(row)
        return rows

    def _record(self) -> None:
        layout = {"replicas": self.replicas, "nodes": [{"port": n.port, "bus_port": n.bus_port} for n in self.nodes]}
        (self.home / LAYOUT_FILE).write_text(json.dumps(layout, indent=2) + "\n")

    def _formed(self) -> bool:
        """Whether the nodes already make one cluster (a restart: their config files say so)."""
        with _client(self.servers[0]) as client:
            info = client.execute_command("CLUSTER", "INFO").decode()
        return _info_field(info, "cluster_known_nodes") == str(len(self.servers))

    def _create(self, timeout: float) -> None:
        """Join fresh nodes as ``redis-cli --cluster create`` does, with ``partition_slots``'s slots:
        distinct config epochs, each master's slots, one MEET per node, then the replicas."""
        masters, replicas = self.servers[:self.shards], self.servers[self.shards:]
        ids = []
        for epoch, server in enumerate(self.servers, start=1):
            with _client(server) as client:
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
                ids.append(client.execute_command("CLUSTER", "MYID").decode())
        for server, slots in zip(masters, partition_slots(self.partitions, self.shards,
                                                                    unpartitioned_keys(self.namespace)), strict=True):
            with _client(server) as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE",
                                       *(bound for run in slot_ranges(slots) for bound in run))
        with _client(self.servers[0]) as first:
            for node in self.nodes[1:]:
                first.execute_command("CLUSTER", "MEET", self.host, node.port, node.bus_port)
        self._wait_known(timeout)
        for index, server in enumerate(replicas):
            with _client(server) as client:
                client.execute_command("CLUSTER", "REPLICATE", ids[index % self.shards])

    def _wait_known(self, timeout: float) -> None:
        """Until every node knows every other (a replica can follow only a master it knows)."""
        deadline = time.monotonic() + timeout
        while True:
            known = []
            for server in self.servers:
                with _client(server) as client:
                    known.append(_info_field(client.execute_command("CLUSTER", "INFO").decode(), "cluster_known_nodes"))
            if known == [str(len(self.servers))] * len(self.servers):
                return
            if time.monotonic() >= deadline:
                raise ServerError(f"the nodes did not meet within {timeout:.0f} s: each knows {known} nodes")
            time.sleep(0.05)

    def _node_state(self, server: EmbeddedRedis) -> str:
        """``ok``, or what this node lacks."""
        try:
            with _client(server) as client:
                info = client.execute_command("CLUSTER", "INFO").decode()
        except redis.RedisError as err:
            return f"no answer ({err})"
        state, known = _info_field(info, "cluster_state"), _info_field(info, "cluster_known_nodes")
        if state != "ok":
            return f"cluster_state:{state}"
        if known != str(len(self.servers)):
            return f"knows {known} of {len(self.servers)} nodes"
        return "ok"


def _replication(server: EmbeddedRedis) -> dict[str, object]:
    with _client(server) as client:
        return dict(client.info("replication"))


def role(server: EmbeddedRedis) -> str:
    """``master`` or ``slave``, as the node says now."""
    return str(_replication(server)["role"])


def replication_offset(server: EmbeddedRedis) -> int:
    """The replication stream's offset: what a master has written, what a replica has received."""
    info = _replication(server)
    return int(info["master_repl_offset"] if info["role"] == "master" else info["slave_repl_offset"])  # type: ignore[call-overload]


def _client(server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis(host=server.host, port=server.port, socket_timeout=2, socket_connect_timeout=1)


def _info_field(info: str, name: str) -> str | None:
    for line in info.splitlines():
        key, _, value = line.strip().partition(":")
        if key == name:
            return value
    return None
