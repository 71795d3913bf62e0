"""RedisTimeSeries' own view of a Redis Cluster, kept in step with the cluster's.

On a cluster, ``TS.MRANGE``/``TS.MGET``/``TS.QUERYINDEX`` fan out to every shard through the
module's own view of the cluster, which it reads only when told, with ``TIMESERIES.REFRESHCLUSTER``
on that node. Measured on this Redis Stack (RedisTimeSeries 1.12, tests/test_cluster_counts.py and
the README): on a cluster never refreshed, each master silently answers from its own shard only
(wrong global counts, no error); after a slot moves between masters it already knows, every master
still answers for every shard; after a failover (a replica promoted: a shard the view does not
know) every node answers ``A multi-shard command failed`` until refreshed; replicas never answer
(the same error). So the view is refreshed:

- by ``fraud setup`` on every master (``refresh_every_master``), and by ``fraud cluster start``;
- by the monitor agent, on every tick, on each master whose view misses one of the cluster's
  masters (``refresh_stale``): a failover or an added shard is repaired within one tick,
  whoever caused it;
- by hand or by another tool after a topology change: ``refresh_timeseries(urls)``.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis
import redis.asyncio as aioredis

from pipeline.client.cluster import ClusterClient, every_master
from pipeline.client.resp import RespClient
from pipeline.core.replies import text_pairs

REFRESH = "TIMESERIES.REFRESHCLUSTER"
INFO = "TIMESERIES.INFOCLUSTER"


def refresh_timeseries(urls: Iterable[str]) -> None:
    """Run the refresh on every node given (masters and replicas alike: a replica promoted later
    needs its own refresh anyway, but a refreshed one costs nothing)."""
    for url in urls:
        with redis.Redis.from_url(url, socket_timeout=5) as node:
            node.execute_command(REFRESH)


async def refresh_every_master(client: RespClient | ClusterClient) -> int:
    """The refresh on every master of a cluster; nothing on a single server. Returns the masters refreshed."""
    if not isinstance(client, ClusterClient):
        return 0
    masters = every_master(client)
    for node in masters:
        await node.execute(REFRESH)
    return len(masters)


def shards_seen(info: list[object]) -> set[str]:
    """The node ids of the shards in a ``TIMESERIES.INFOCLUSTER`` reply (``MyId``, ``MyRunId``, then one
    record per shard), those it does not count as connected left out."""
    shards = info[-1] if info and isinstance(info[-1], list) else []
    seen = set()
    for shard in shards:
        fields = text_pairs(shard)
        if fields.get("status", "connected") == "connected":
            seen.add(fields["id"])
    return seen


async def refresh_stale(client: aioredis.Redis | aioredis.RedisCluster) -> list[str]:
    """Refresh each live master whose module's view differs from the masters serving slots now;
    returns the addresses refreshed. Nothing on a single server (its view is itself)."""
    if not isinstance(client, aioredis.RedisCluster):
        return []
    nodes = await client.cluster_nodes()
    masters = {address: node["node_id"] for address, node in nodes.items()
               if "master" in node["flags"] and "fail" not in node["flags"] and node["slots"]}
    refreshed = []
    for address in sorted(masters):
        host, _, port = address.rpartition(":")
        node = client.get_node(host, int(port))
        if node is None:
            await client.nodes_manager.initialize()  # a node it does not know yet: a promoted replica
            node = client.get_node(host, int(port))
        if node is None:
            continue
        info = await client.execute_command(INFO, target_nodes=node)
        if shards_seen(info) != set(masters.values()):
            await client.execute_command(REFRESH, target_nodes=node)
            refreshed.append(address)
    return refreshed
