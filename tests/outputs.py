"""The pipeline's outputs as a test reads them: every partition's streams, counters and groups."""

from __future__ import annotations

from collections import Counter

import redis

from agents.pipeline import PIPELINE, ROUTER
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings

Entries = list[tuple[bytes, list[bytes]]]


def read_stream(client: redis.Redis, stream: str) -> Entries:
    """Every entry of a stream as (id, flat field list), in chunks so big streams stay cheap."""
    # redis-py turns XRANGE replies into dicts, which would hide a field given twice.
    client.set_response_callback("XRANGE", lambda reply, **_: reply)
    out: Entries = []
    start: bytes | str = "-"
    while True:
        chunk = client.execute_command("XRANGE", stream, start, "+", "COUNT", 10_000)
        if not chunk:
            return out
        out += [(entry_id, list(flat)) for entry_id, flat in chunk]
        start = b"(" + chunk[-1][0]


def read_partitions(client: redis.Redis, settings: Settings, stream: str) -> Entries:
    """The entries of one stream (`verdicts`, `dead`, `input`) of every partition, partition by partition."""
    parts = Keys(settings.namespace).partitions(settings.partitions)
    return [entry for part in parts for entry in read_stream(client, getattr(part, stream))]


def stats_totals(client: redis.Redis, settings: Settings) -> dict[str, int]:
    """Every counter summed over the partitions."""
    totals: Counter[str] = Counter()
    for part in Keys(settings.namespace).partitions(settings.partitions):
        totals.update({k.decode(): int(v) for k, v in client.hgetall(part.stats).items()})
    return dict(totals)


def group_state(client: redis.Redis, stream: str, group: str) -> tuple[int | None, int] | None:
    """(lag, pending) of a group, or None while the group does not exist."""
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:
        return None
    for info in groups:
        name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
        if name == group:
            return info["lag"], info["pending"]
    return None


def stage_drained(client: redis.Redis, settings: Settings, stage_name: str) -> bool:
    """Whether the stage's group has read and committed everything in each of its inputs."""
    keys = Keys(settings.namespace)
    stage = next(s for s in PIPELINE if s.name == stage_name)
    for unit in stage.units(settings):
        stream = stage.input_stream(keys, unit)
        if client.exists(stream) and group_state(client, stream, stage.name) != (0, 0):
            return False
    return True


def pipeline_drained(client: redis.Redis, settings: Settings) -> bool:
    """Every stage has committed all its input (the raw stream's router group exists once routed)."""
    raw = Keys(settings.namespace).raw
    routing = group_state(client, raw, ROUTER.name) is not None or not client.exists(raw)
    return routing and all(stage_drained(client, settings, stage.name) for stage in PIPELINE)


def lease_owners(client: redis.Redis, settings: Settings, stage_name: str) -> dict[int, str]:
    """partition -> its lease's owner (empty when free), as recorded (whether or not it ran out)."""
    keys = Keys(settings.namespace)
    stage = next(s for s in PIPELINE if s.name == stage_name)
    return {unit: (client.hget(stage.lease_key(keys, unit), "owner") or b"").decode()
            for unit in stage.units(settings)}
