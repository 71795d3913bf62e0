"""``fraud status``: the pipeline's health from the server's own bookkeeping.

Everything comes from Redis (XINFO, XLEN, MEMORY USAGE, the stats hash), so
the report describes the pipeline whichever processes run it, and works
before anything ever ran (absent streams and groups read as zeros).

A snapshot is plain data (JSON-ready dicts), shared by the table, ``--json``
and the monitor agent that records it as TimeSeries.
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

STREAM_NAMES: tuple[str, ...] = ("raw", "verdicts", "dead")
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


def stage_processed(stats: Mapping[str, int]) -> dict[str, int]:
    """Entries each stage has finished with (verdict, duplicate or dead letter), from the stats hash."""
    return {stage.name: stage.finished_count(stats) for stage in PIPELINE}


def throughput(previous: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any] | None:
    """Clicks/s per stage between two readings (each with ``taken_at_ms`` and ``stats``).

    None when no time passed; a stage whose counters went down (the hash was
    reset meanwhile) gets None rather than a negative rate.
    """
    seconds = (current["taken_at_ms"] - previous["taken_at_ms"]) / 1000
    if seconds <= 0:
        return None
    before, after = stage_processed(previous["stats"]), stage_processed(current["stats"])
    rates = {stage: (after[stage] - before[stage]) / seconds if after[stage] >= before[stage] else None
             for stage in after}
    return {"over_s": round(seconds, 3), "clicks_per_s": rates}


async def read_stats(client: aioredis.Redis, keys: Keys) -> dict[str, Any]:
    """The stats hash and when it was read: the cheap reading a throughput needs."""
    stats = {name: int(value) for name, value in (await client.hgetall(keys.stats)).items()}
    return {"taken_at_ms": int(time.time() * 1000), "stats": dict(sorted(stats.items()))}


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


async def group_info(client: aioredis.Redis, stream: dict[str, Any], group: Mapping[str, Any]) -> dict[str, Any]:
    lag, estimated = group.get("lag"), False
    if lag is None:
        lag, estimated = await estimate_lag(client, stream, group), True
    consumers = await client.xinfo_consumers(stream["key"], group["name"])
    entries_read = group.get("entries-read")
    return {
        "stream": stream["key"], "consumers": int(group["consumers"]), "pending": int(group["pending"]),
        "lag": int(lag), "lag_estimated": estimated, "last_delivered_id": group["last-delivered-id"],
        "entries_read": None if entries_read is None else int(entries_read),
        "members": [{"name": c["name"], "pending": int(c["pending"]), "idle_ms": int(c["idle"]),
                     "inactive_ms": int(c.get("inactive", -1))} for c in consumers],
    }


async def dead_letters(client: aioredis.Redis, keys: Keys, length: int, sample: int) -> dict[str, Any]:
    recent = await client.xrevrange(keys.dead, count=sample) if length and sample else []
    # A reason reads "<kind>: <detail>"; the details (an address, a message) would scatter the counts.
    kinds = Counter(fields.get("reason", "").split(":", 1)[0] or "unknown" for _, fields in recent)
    return {"count": length, "sampled": len(recent), "reasons": dict(kinds.most_common())}


async def snapshot(client: aioredis.Redis, keys: Keys, previous: Mapping[str, Any] | None = None,
                   dead_sample: int = DEAD_SAMPLE) -> dict[str, Any]:
    """The pipeline's state now; with an earlier reading (``read_stats`` or a snapshot), its rates too."""
    reading = await read_stats(client, keys)
    streams = {name: await stream_info(client, getattr(keys, name)) for name in STREAM_NAMES}
    groups: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(stage.input for stage in PIPELINE):
        stream = streams[name]
        if stream["exists"]:
            for group in await client.xinfo_groups(stream["key"]):
                groups[group["name"]] = await group_info(client, stream, group)
    return {
        "taken_at_ms": reading["taken_at_ms"],
        "namespace": keys.namespace,
        "streams": streams,
        "groups": groups,
        "throughput": throughput(previous, reading) if previous is not None else None,
        "dead_letters": await dead_letters(client, keys, streams["dead"]["length"], dead_sample),
        "stats": reading["stats"],
    }


def breaches(snap: Mapping[str, Any], max_lag: int | None, max_pending: int | None,
             max_dead: int | None) -> list[str]:
    """One line per threshold a snapshot exceeds."""
    lines: list[str] = []
    for name, group in snap["groups"].items():
        if max_lag is not None and group["lag"] > max_lag:
            lines.append(f"lag {group['lag']} of group {name} on {group['stream']} exceeds --max-lag {max_lag}")
        if max_pending is not None and group["pending"] > max_pending:
            lines.append(f"pending {group['pending']} of group {name} on {group['stream']} "
                         f"exceeds --max-pending {max_pending}")
    dead = snap["dead_letters"]["count"]
    if max_dead is not None and dead > max_dead:
        lines.append(f"{dead} dead letters in {snap['streams']['dead']['key']} exceed --max-dead {max_dead}")
    return lines
