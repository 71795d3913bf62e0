"""Move one slot (a partition's keys) to another master while the pipeline runs.

``redis-cli --cluster reshard`` moves a slot's keys a few at a time, and meanwhile the source
answers for the slot with some keys gone: a Redis Function that then touches a key it did not
declare (a device's window, an offender bucket) and that has left fails half-way, its earlier
writes kept. Here the source gives the slot up in one ``MULTI``: ``MIGRATING``, every key of the
slot moved by one ``MIGRATE`` (run inside a script, which reads the slot's keys at that instant),
then ``NODE <target>``; no command of another client runs in between, so every step runs on the
source with all its keys or, after a ``MOVED``, on the target with all of them. The target,
``IMPORTING`` beforehand, takes the slot with ``NODE`` at once after (the agents' client rereads
the slot map on ``MOVED`` and retries until the nodes agree).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.crc import key_slot

from pipeline.core.errors import FraudError
from pipeline.ops.timeseries_cluster import refresh_timeseries

# Reads every key of the slot as it is now and moves them in one MIGRATE (KEYS form: one round trip).
MOVE_KEYS = """
local keys = redis.call('CLUSTER', 'GETKEYSINSLOT', ARGV[1], ARGV[5])
if #keys == 0 then return 0 end
redis.call('MIGRATE', ARGV[2], ARGV[3], '', 0, ARGV[4], 'KEYS', unpack(keys))
return #keys
"""
# Keys of one slot moved at most: a partition's keys number its devices' windows and trails plus a
# few dozen; the whole slot must go in one call, so the bound is generous.
MAX_KEYS = 10_000_000
MIGRATE_TIMEOUT_MS = 10_000


def node_id(node: redis.Redis) -> str:
    reply = node.execute_command("CLUSTER", "MYID")
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def move_slot(source: redis.Redis, target: redis.Redis, target_host: str, target_port: int, slot: int) -> int:
    """Move ``slot`` from the master ``source`` (which serves it) to the master ``target``; the keys moved."""
    source_id, target_id = node_id(source), node_id(target)
    target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    with source.pipeline(transaction=True) as handover:
        handover.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        handover.execute_command("EVAL", MOVE_KEYS, 0, slot, target_host, target_port, MIGRATE_TIMEOUT_MS, MAX_KEYS)
        handover.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        replies = handover.execute(raise_on_error=False)
    failed = [reply for reply in replies if isinstance(reply, Exception)]
    if failed:
        # Give the slot back whole: the source still holds every key (MIGRATE moves all or none).
        source.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
        target.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
        raise redis.RedisError(f"slot {slot} stayed on its master: {'; '.join(map(str, failed))}")
    target.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    return int(replies[1])


class ReshardError(FraudError):
    pass


@dataclass(frozen=True)
class PartitionMove:
    partition: int
    slot: int
    source: str
    target: str
    keys: int
    # Nodes told TIMESERIES.REFRESHCLUSTER afterwards (every node that answered: masters and replicas).
    refreshed: int

    @property
    def moved(self) -> bool:
        return self.source != self.target


def node_url(url: str, address: str) -> str:
    """``url`` (a node's) with another node's ``host:port``: its credentials and options kept."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=(credentials + "@" if credentials else "") + address))


@dataclass(frozen=True)
class ClusterNode:
    address: str
    flags: frozenset[str]
    slots: tuple[tuple[int, int], ...]

    @property
    def reachable(self) -> bool:
        return not self.flags & {"fail", "noaddr", "handshake"}


def cluster_nodes(seed: redis.Redis) -> list[ClusterNode]:
    """Every node the seed knows, from ``CLUSTER NODES``: ``host:port``, flags and the slot ranges
    it serves (slots being imported or migrated, ``[slot->-id]``, are not served ones)."""
    reply = seed.execute_command("CLUSTER", "NODES")
    nodes = []
    for line in (reply.decode() if isinstance(reply, bytes) else str(reply)).splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        ranges = [text.split("-") for text in fields[8:] if not text.startswith("[")]
        nodes.append(ClusterNode(fields[1].split("@")[0], frozenset(fields[2].split(",")),
                                 tuple((int(r[0]), int(r[-1])) for r in ranges)))
    return nodes


def move_partition(url: str, partition: int, target: str, options: Mapping[str, Any] | None = None) -> PartitionMove:
    """Move partition ``partition``'s slot (its tag ``{p}``) to the master at ``target``
    (host:port) with ``move_slot``, then refresh every node's TimeSeries view of the cluster.
    ``url`` is any node's, ``options`` redis-py's (TLS) for every node. A partition already on
    ``target`` is left as it is."""
    options = options or {}
    slot = key_slot(str(partition).encode())
    with redis.Redis.from_url(url, **options) as seed:
        masters = {node.address: node for node in cluster_nodes(seed) if "master" in node.flags and node.reachable}
        if target not in masters:
            raise ReshardError(f"{target} is not a master of this cluster: its masters are "
                               f"{', '.join(sorted(masters))}")
        source = next((address for address, node in masters.items()
                       if any(first <= slot <= last for first, last in node.slots)), None)
        if source is None:
            raise ReshardError(f"no master serves partition {partition}'s slot {slot}")
        keys = 0
        if source != target:
            host, _, port = target.rpartition(":")
            with (redis.Redis.from_url(node_url(url, source), **options) as from_node,
                  redis.Redis.from_url(node_url(url, target), **options) as to_node):
                keys = move_slot(from_node, to_node, host, int(port), slot)
        return PartitionMove(partition, slot, source, target, keys, refresh_timeseries(
            # A topology change leaves the module's TS.MRANGE fan-out on the old shape until each node is told.
            [node_url(url, node.address) for node in cluster_nodes(seed) if node.reachable], options))
