"""``fraud status``: the pipeline's health from the server's own bookkeeping.

Everything comes from Redis (XINFO, MEMORY USAGE, the partitions' stats hashes, the leases and
member sets, the server's TIME), so the report describes the pipeline whichever processes run
it, and works before anything ever ran (absent streams and groups read as zeros).

Each stage is shown unit by unit: the router's one input (``clicks:raw``), and every partition's
input of the partitioned stages, with the unit's owner (its lease, and whether it is live by the
server's clock), its group's lag and pending, and the stage's totals. Counters and dead letters
are summed over the partitions.

A snapshot is plain data (JSON-ready dicts), shared by the table, ``--json``, the live view and
the monitor agent that records it as TimeSeries.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from agents.pipeline import PIPELINE
from pipeline.client.connection import open_redis
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.core.stream_ids import parse_id
from pipeline.ops.shards import shard_info
from pipeline.runtime.stage import Stage

# The partitions' streams shown summed (as attribute names of PartitionKeys).
PARTITION_STREAMS: tuple[str, ...] = ("input", "verdicts", "dead")
# Counting what is left after a group's last delivered id is exact but reads the
# entries: only done below this length, above it the counters give an estimate.
LAG_SCAN_LIMIT = 10_000
DEAD_SAMPLE = 100
THRESHOLD_EXIT = 3
# Entries may hold any bytes: one that is not UTF-8 is shown backslash-escaped (b"\\xff"), never a crash.
UNDECODABLE = "backslashreplace"


async def open_status_client(settings: Settings) -> aioredis.Redis:
    """The client of the tools that read and show the pipeline (status, live view, monitor)."""
    return await open_redis(settings, encoding_errors=UNDECODABLE)


async def recorded_partitions(client: aioredis.Redis, keys: Keys, default: int | None = None) -> int:
    """The pipeline's number of partitions as recorded in its config; `default` (else 0) before any is."""
    found = await client.hget(keys.config, "partitions")
    return int(found) if found is not None else (default or 0)


def stage_processed(stats: Mapping[str, int]) -> dict[str, int]:
    """Entries each stage has finished with (verdict, duplicate or dead letter), from the summed counters."""
    return {stage.name: stage.finished_count(stats) for stage in PIPELINE}


def throughput(previous: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any] | None:
    """Clicks/s per stage between two readings (each with ``taken_at_ms`` and ``stats``).

    None when no time passed; a stage whose counters went down (the hashes were
    reset meanwhile) gets None rather than a negative rate.
    """
    seconds = (current["taken_at_ms"] - previous["taken_at_ms"]) / 1000
    if seconds <= 0:
        return None
    before, after = stage_processed(previous["stats"]), stage_processed(current["stats"])
    rates = {stage: (after[stage] - before[stage]) / seconds if after[stage] >= before[stage] else None
             for stage in after}
    return {"over_s": round(seconds, 3), "clicks_per_s": rates}


async def read_stats(client: aioredis.Redis, keys: Keys, partitions: int | None = None) -> dict[str, Any]:
    """Every partition's counters summed, and when they were read: the cheap reading a throughput
    needs. `partitions`: the number to read while the pipeline has recorded none."""
    return await _summed_stats(client, keys, await recorded_partitions(client, keys, partitions))


async def _summed_stats(client: aioredis.Redis, keys: Keys, partitions: int) -> dict[str, Any]:
    totals: Counter[str] = Counter()
    for part in keys.partitions(partitions):
        totals.update({name: int(value) for name, value in (await client.hgetall(part.stats)).items()})
    return {"taken_at_ms": int(time.time() * 1000), "stats": dict(sorted(totals.items()))}


def _entry_time(entry: Any) -> tuple[str | None, int | None]:
    if not entry:
        return None, None
    return entry[0], parse_id(entry[0])[0]


async def stream_info(client: aioredis.Redis, key: str) -> dict[str, Any]:
    try:
        info = await client.xinfo_stream(key)
    except ResponseError as err:
        if "no such key" not in str(err).lower():
            raise
        return {"key": key, "exists": False, "length": 0, "entries_added": 0, "first_id": None,
                "first_time_ms": None, "last_id": None, "last_time_ms": None, "memory_bytes": 0}
    first_id, first_ms = _entry_time(info.get("first-entry"))
    last_id, last_ms = _entry_time(info.get("last-entry"))
    return {"key": key, "exists": True, "length": int(info["length"]),
            "entries_added": int(info["entries-added"]), "first_id": first_id, "first_time_ms": first_ms,
            "last_id": last_id, "last_time_ms": last_ms,
            "memory_bytes": int(await client.memory_usage(key) or 0)}


def every_partition(keys: Keys, name: str) -> str:
    """A partition key's name with ``{*}`` for its partition (``clicks:{*}:verdicts``), to show a sum by."""
    first = keys.partition(0)
    return f"{keys.namespace}:{{*}}:" + str(getattr(first, name)).removeprefix(first.prefix)


def summed_streams(key: str, infos: list[dict[str, Any]]) -> dict[str, Any]:
    """One kind of partition stream (every partition's ``verdicts``...) as one: sizes summed, the
    first entry the earliest of them, the last the latest."""
    present = [i for i in infos if i["exists"]]
    first = min((i for i in present if i["first_id"]), key=lambda i: parse_id(i["first_id"]), default=None)
    last = max((i for i in present if i["last_id"]), key=lambda i: parse_id(i["last_id"]), default=None)
    return {"key": key, "exists": bool(present), "partitions": len(present),
            "length": sum(i["length"] for i in infos), "entries_added": sum(i["entries_added"] for i in infos),
            "first_id": first and first["first_id"], "first_time_ms": first and first["first_time_ms"],
            "last_id": last and last["last_id"], "last_time_ms": last and last["last_time_ms"],
            "memory_bytes": sum(i["memory_bytes"] for i in infos)}


async def estimate_lag(client: aioredis.Redis, stream: dict[str, Any], group: Mapping[str, Any]) -> int:
    """What Redis would call lag, when it reports null (entries deleted after the group's position)."""
    last = group["last-delivered-id"]
    if stream["length"] <= LAG_SCAN_LIMIT:
        # Exact: the entries that still exist after the group's position.
        return len(await client.xrange(stream["key"], f"({last}", "+"))
    if group.get("entries-read") is not None:
        # Counts deleted entries too: an upper bound, close when deletions are few.
        return max(0, stream["entries_added"] - int(group["entries-read"]))
    return int(stream["length"])


async def group_info(client: aioredis.Redis, stream: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The stage's group on one input stream: its position, lag and pending; None while it does not exist."""
    if not stream["exists"]:
        return None
    group = next((g for g in await client.xinfo_groups(stream["key"]) if g["name"] == name), None)
    if group is None:
        return None
    lag, estimated = group.get("lag"), False
    if lag is None:
        lag, estimated = await estimate_lag(client, stream, group), True
    entries_read = group.get("entries-read")
    return {"pending": int(group["pending"]), "lag": int(lag), "lag_estimated": estimated,
            "last_delivered_id": group["last-delivered-id"],
            "entries_read": None if entries_read is None else int(entries_read)}


async def lease_info(client: aioredis.Redis, key: str, now_ms: int) -> dict[str, Any]:
    """Who holds a lease, at which epoch, until when, and whether that is still ahead of the server's clock."""
    held = await client.hgetall(key)
    owner, until = held.get("owner") or None, int(held.get("until") or 0)
    return {"owner": owner, "epoch": int(held.get("epoch") or 0), "until_ms": until or None,
            "live": owner is not None and until > now_ms}


async def unit_info(client: aioredis.Redis, keys: Keys, stage: Stage, unit: int, now_ms: int) -> dict[str, Any]:
    stream = await stream_info(client, stage.input_stream(keys, unit))
    group = await group_info(client, stream, stage.name)
    if group is None:
        # The stage never ran here: it will start at the stream's beginning, so all of it is its lag.
        group = {"pending": 0, "lag": stream["length"], "lag_estimated": False, "last_delivered_id": None,
                 "entries_read": None}
    return {"partition": unit if stage.partitioned else None, "stream": stream["key"], "length": stream["length"],
            "group": group["last_delivered_id"] is not None, **group,
            "lease": await lease_info(client, stage.lease_key(keys, unit), now_ms)}


async def live_members(client: aioredis.Redis, keys: Keys, stage: Stage, now_ms: int) -> list[str]:
    """The stage's members whose heartbeat has not run out by the server's clock."""
    return sorted(await client.zrangebyscore(keys.members(stage.name), f"({now_ms}", "+inf"))


async def stage_info(client: aioredis.Redis, keys: Keys, stage: Stage, partitions: int,
                     now_ms: int) -> dict[str, Any]:
    rows = [await unit_info(client, keys, stage, unit, now_ms) for unit in stage.units_of(partitions)]
    return {
        "partitioned": stage.partitioned,
        "members": await live_members(client, keys, stage, now_ms),
        "units": rows,
        "totals": {"units": len(rows), "groups": sum(r["group"] for r in rows),
                   "owned": sum(r["lease"]["live"] for r in rows),
                   "lag": sum(r["lag"] for r in rows), "lag_estimated": any(r["lag_estimated"] for r in rows),
                   "pending": sum(r["pending"] for r in rows), "length": sum(r["length"] for r in rows)},
    }


async def dead_letters(client: aioredis.Redis, keys: Keys, partitions: int, sample: int) -> dict[str, Any]:
    """Dead letters of every partition: how many, and the reasons of the newest `sample` of them."""
    count, recent = 0, []
    for part in keys.partitions(partitions):
        length = await client.xlen(part.dead)
        count += length
        if length and sample:
            recent += await client.xrevrange(part.dead, count=sample)
    recent = sorted(recent, key=lambda entry: parse_id(entry[0]), reverse=True)[:sample]
    # A reason reads "<kind>: <detail>"; the details (an address, a message) would scatter the counts.
    kinds = Counter(fields.get("reason", "").split(":", 1)[0] or "unknown" for _, fields in recent)
    return {"count": count, "sampled": len(recent), "reasons": dict(kinds.most_common())}


async def server_time_ms(client: aioredis.Redis) -> int:
    """The server's clock: leases and memberships run out by it, whatever this host's clock says."""
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def snapshot(client: aioredis.Redis, keys: Keys, previous: Mapping[str, Any] | None = None,
                   dead_sample: int = DEAD_SAMPLE, partitions: int | None = None,
                   shards: bool = False) -> dict[str, Any]:
    """The pipeline's state now; with an earlier reading (``read_stats`` or a snapshot), its rates too.

    `partitions`: used when the pipeline has recorded none yet (nothing ran); the recorded number wins.
    `shards`: each node's role, memory, load and partitions too (``shards.shard_info``; INFO and
    CLUSTER NODES, which the monitor's user is not allowed).
    """
    recorded = await client.hget(keys.config, "partitions")
    count = int(recorded) if recorded is not None else (partitions or 0)
    reading = await _summed_stats(client, keys, count)
    now_ms = await server_time_ms(client)
    parts = keys.partitions(count)
    streams = {"raw": await stream_info(client, keys.raw)}
    for name in PARTITION_STREAMS:
        infos = [await stream_info(client, getattr(part, name)) for part in parts]
        streams[name] = summed_streams(every_partition(keys, name), infos)
    return {
        "taken_at_ms": reading["taken_at_ms"],
        "server_time_ms": now_ms,
        "namespace": keys.namespace,
        "partitions": count,
        "partitions_recorded": recorded is not None,
        "streams": streams,
        "stages": {stage.name: await stage_info(client, keys, stage, count, now_ms) for stage in PIPELINE},
        "throughput": throughput(previous, reading) if previous is not None else None,
        "dead_letters": await dead_letters(client, keys, count, dead_sample),
        "stats": reading["stats"],
        **({"shards": await shard_info(client, count)} if shards else {}),
    }


def breaches(snap: Mapping[str, Any], max_lag: int | None, max_pending: int | None,
             max_dead: int | None) -> list[str]:
    """One line per threshold a snapshot exceeds: lag and pending are each stage's totals."""
    lines: list[str] = []
    for name, stage in snap["stages"].items():
        totals = stage["totals"]
        if max_lag is not None and totals["lag"] > max_lag:
            lines.append(f"lag {totals['lag']} of stage {name} ({_where(stage)}) exceeds --max-lag {max_lag}")
        if max_pending is not None and totals["pending"] > max_pending:
            lines.append(f"pending {totals['pending']} of stage {name} ({_where(stage)}) "
                         f"exceeds --max-pending {max_pending}")
    dead = snap["dead_letters"]["count"]
    if max_dead is not None and dead > max_dead:
        lines.append(f"{dead} dead letters in {snap['streams']['dead']['key']} exceed --max-dead {max_dead}")
    return lines


def _where(stage: Mapping[str, Any]) -> str:
    """Which units a stage's lag lies in: its partitions that have any, or its one stream."""
    if not stage["partitioned"]:
        return stage["units"][0]["stream"]
    behind = [str(u["partition"]) for u in stage["units"] if u["lag"]]
    return "partitions " + ",".join(behind) if behind else "no partition"
