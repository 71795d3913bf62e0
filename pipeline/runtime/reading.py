"""Reading several partitions' streams at once, on one server or on a Redis Cluster.

On one server, one ``XREAD`` covers every stream (and blocks for all of them). On a cluster, all
keys of one command must share a slot and every partition is its own slot, so each stream gets
its own non-blocking ``XREAD`` (the cluster client sends each node's share at once); only when
all came back empty does the reader block, on one of them, for at most ``CLUSTER_BLOCK_MS``, so
that a click arriving in another partition waits no longer than that.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.client.cluster import ClusterClient
from pipeline.client.resp import RespClient, all_replies
from pipeline.runtime.stage import Entry

CLUSTER_BLOCK_MS = 20

Entries = list[Any]


async def read_streams(client: RespClient | ClusterClient, streams: Sequence[str], cursors: Sequence[bytes],
                       count: int, block_ms: int | None) -> dict[str, Entries]:
    """stream -> the entries after its cursor (streams with none are left out)."""
    if not isinstance(client, ClusterClient) or len(streams) == 1:
        return await _xread(client, streams, cursors, count, block_ms)
    replies = await client.pipeline([("XREAD", "COUNT", count, "STREAMS", s, c)
                                      for s, c in zip(streams, cursors, strict=True)])
    found: dict[str, Entries] = {}
    for reply in all_replies(replies):
        found |= _by_stream(reply)
    if found or block_ms is None:
        return found
    # Nothing anywhere: wait on one partition (any: the others wait at most the short block).
    turn = random.randrange(len(streams))
    return await _xread(client, [streams[turn]], [cursors[turn]], count, min(block_ms, CLUSTER_BLOCK_MS))


async def read_units(client: RespClient | ClusterClient, streams: Mapping[int, str], cursors: Mapping[int, bytes],
                     count: int, block_ms: int | None) -> dict[int, list[Entry]]:
    """unit (a partition) -> the entries after its cursor in its stream (units with none are left out)."""
    units = sorted(streams)
    if not units:
        return {}
    by_stream = await read_streams(client, [streams[u] for u in units], [cursors[u] for u in units], count, block_ms)
    return {u: [(e[0], e[1]) for e in by_stream[streams[u]]] for u in units if by_stream.get(streams[u])}


async def _xread(client: RespClient | ClusterClient, streams: Sequence[str], cursors: Sequence[bytes],
                 count: int, block_ms: int | None) -> dict[str, Entries]:
    args: list[Any] = ["XREAD", "COUNT", count]
    if block_ms is not None:
        args += ("BLOCK", block_ms)
    return _by_stream(await client.execute(*args, "STREAMS", *streams, *cursors))


def _by_stream(reply: Any) -> dict[str, Entries]:
    return {name.decode(): entries for name, entries in reply or () if entries}
