"""RedisTimeSeries' own view of a Redis Cluster, kept in step with the cluster's.

On a cluster, ``TS.MRANGE``/``TS.MGET``/``TS.QUERYINDEX`` fan out to every shard through the
module's own view of the cluster, which it reads only when told, with ``TIMESERIES.REFRESHCLUSTER``
on that node. Measured on this Redis Stack (RedisTimeSeries 1.12, tests/test_cluster_counts.py and
the README): on a cluster never refreshed, each master silently answers from its own shard only
(wrong global counts, no error); after a slot moves between masters it already knows, every master
still answers for every shard; after a failover (a replica promoted: a shard the view does not
know) every node answers ``A multi-shard command failed`` until refreshed; after a master
restarts, it has no view (``no cluster mode``: its own shard only, silently) and the others fail
as after a failover; replicas never answer (the same error). So the view is refreshed:

- by ``fraud setup`` on every master (``refresh_every_master``), and by ``fraud cluster start``;
- by the monitor agent, on every tick, on each master whose view is not the cluster's masters as
  they run now (``refresh_stale``): a failover, a restart or an added shard is repaired within
  one tick, whoever caused it;
- by hand or by another tool after a topology change: ``refresh_timeseries(urls)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import redis
import redis.asyncio as aioredis

from pipeline.client.cluster import ClusterClient, every_master
from pipeline.client.resp import RespClient
from pipeline.core.replies import text_pairs

REFRESH = "TIMESERIES.REFRESHCLUSTER"
INFO = "TIMESERIES.INFOCLUSTER"


def refresh_timeseries(urls: Iterable[str], options: Mapping[str, Any] | None = None) -> int:
    """Run the refresh on every node given (masters and replicas alike: a replica promoted later
    needs its own refresh anyway, but a refreshed one costs nothing); ``options`` are redis-py's
    (TLS) for every node. Returns the nodes told."""
    told = 0
    for url in urls:
        with redis.Redis.from_url(url, **{"socket_timeout": 5, **(options or {})}) as node:
            node.execute_command(REFRESH)
        told += 1
    return told


async def refresh_every_master(client: RespClient | ClusterClient) -> int:
    """The refresh on every master of a cluster; nothing on a single server. Returns the masters refreshed."""
    if not isinstance(client, ClusterClient):
        return 0
    masters = every_master(client)
    for node in masters:
        await node.execute(REFRESH)
    return len(masters)


def shards_seen(info: Any) -> set[tuple[str, str]]:
    """(node id, module run id) of each shard in a ``TIMESERIES.INFOCLUSTER`` reply (``MyId``,
    ``MyRunId``, then one record per shard); none when the node has no view (``no cluster mode``:
    not refreshed since it started). The run id is the module's own, drawn when it starts: it
    tells a restarted node from the one a view was made with (a connection's status does not:
    ``uninitialized`` until first used, on a sound view too)."""
    if not isinstance(info, list) or not info or not isinstance(info[-1], list):
        return set()
    return {(fields["id"], fields["runid"]) for fields in map(text_pairs, info[-1])}


def itself(info: Any) -> tuple[str, str] | None:
    """(``MyId``, ``MyRunId``) of the node that gave an ``INFOCLUSTER`` reply; None without a view."""
    if not isinstance(info, list) or len(info) < 4:
        return None
    fields = text_pairs(info[:4])
    return fields["MyId"], fields["MyRunId"]


async def refresh_stale(client: aioredis.Redis | aioredis.RedisCluster) -> list[str]:
    """Refresh each live master whose module's view is not the cluster's masters as they run now;
    returns the addresses refreshed. Nothing on a single server (its view is itself).

    First those without a view or whose view lacks a master or has another (a restart, a
    failover, an added shard): once refreshed, each tells its module's run id; then those whose
    view has another run id for a master (one that restarted since)."""
    if not isinstance(client, aioredis.RedisCluster):
        return []
    masters = await _live_masters(client)

    async def view(target: Any) -> Any:
        return await client.execute_command(INFO, target_nodes=target)

    views = {address: await view(target) for address, (target, _) in masters.items()}
    ids = {node_id for _, node_id in masters.values()}
    refreshed = []
    for address, (target, _) in masters.items():
        if {node_id for node_id, _ in shards_seen(views[address])} != ids:
            await client.execute_command(REFRESH, target_nodes=target)
            refreshed.append(address)
            views[address] = await view(target)
    running = {me for info in views.values() if (me := itself(info)) is not None}
    for address, (target, _) in masters.items():
        if address not in refreshed and shards_seen(views[address]) != running:
            await client.execute_command(REFRESH, target_nodes=target)
            refreshed.append(address)
    return sorted(refreshed)


async def _live_masters(client: aioredis.RedisCluster) -> dict[str, tuple[Any, str]]:
    """address -> (the client's node, node id) of every master serving slots and not failed."""
    masters = {}
    for address, node in sorted((await client.cluster_nodes()).items()):
        if "master" not in node["flags"] or "fail" in node["flags"] or not node["slots"]:
            continue
        host, _, port = address.rpartition(":")
        target = client.get_node(host, int(port))
        if target is None:
            await client.nodes_manager.initialize()  # a node it does not know yet: a promoted replica
            target = client.get_node(host, int(port))
        if target is not None:
            masters[address] = (target, node["node_id"])
    return masters
