"""``fraud status`` per shard: each node of a Redis Cluster (or the one server) with its role,
memory, load and the partitions whose slots it serves.

A node's partitions are those whose hash tag ``{p}`` falls in its slots; a replica serves its
master's (it holds their copy). On a single server every partition is the one shard's.
Read with ``CLUSTER NODES`` (any node's view of the cluster) and each node's ``INFO memory
stats``; a node that does not answer is shown with its state instead of its figures.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pipeline.client.cluster import slot_of


def _slots(ranges: list[list[str]]) -> list[tuple[int, int]]:
    """CLUSTER NODES' slot ranges (``[first, last]`` or ``[slot]``; importing/migrating marks left out)."""
    return [(int(r[0]), int(r[-1])) for r in ranges if r and r[0].isdigit()]


def partitions_in(ranges: list[tuple[int, int]], partitions: int) -> list[int]:
    return [p for p in range(partitions) if any(lo <= slot_of(str(p)) <= hi for lo, hi in ranges)]


async def _figures(client: aioredis.Redis, **target: Any) -> dict[str, Any]:
    try:
        info = await client.info("memory", "stats", **target)
    except (RedisError, OSError) as err:
        return {"state": f"no answer ({err})", "used_memory": None, "ops_per_sec": None}
    return {"state": "ok", "used_memory": int(info["used_memory"]),
            "ops_per_sec": int(info["instantaneous_ops_per_sec"])}


async def shard_info(client: aioredis.Redis, partitions: int) -> list[dict[str, Any]]:
    """One row per node: address, role (master or replica), master (a replica's), state, used
    memory (bytes), instantaneous ops/s, partitions served; masters first, each followed by its replicas."""
    if not isinstance(client, aioredis.RedisCluster):
        kwargs = client.connection_pool.connection_kwargs
        replication = await client.info("replication")
        # A replica outside a cluster (status read from it) holds its master's copy of every partition.
        master = (f"{replication['master_host']}:{replication['master_port']}"
                  if replication.get("role") == "slave" else None)
        return [{"address": f"{kwargs.get('host')}:{kwargs.get('port')}", "role": "replica" if master else "master",
                 "master": master, **await _figures(client), "partitions": list(range(partitions))}]
    nodes = await client.cluster_nodes()
    ids = {node["node_id"]: address for address, node in nodes.items()}
    masters = {address: _slots(node["slots"]) for address, node in nodes.items() if "master" in node["flags"]}
    rows = []
    for address, node in nodes.items():
        master = None if address in masters else ids.get(node["master_id"])
        row = {"address": address, "role": "master" if master is None else "replica", "master": master,
               "partitions": partitions_in(masters.get(master or address, []), partitions)}
        host, _, port = address.rpartition(":")
        target = client.get_node(host, int(port))
        if "fail" in node["flags"] and "fail?" not in node["flags"]:
            row.update(state="failed", used_memory=None, ops_per_sec=None)
        elif target is None:
            row.update(state="not in the client's map", used_memory=None, ops_per_sec=None)
        else:
            row.update(await _figures(client, target_nodes=target))
        rows.append(row)
    return sorted(rows, key=lambda r: (r["master"] or r["address"], r["role"] != "master", r["address"]))
