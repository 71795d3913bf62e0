"""The pipeline's outputs as a test reads them: every partition's streams, counters and groups."""

from __future__ import annotations

from collections import Counter

import redis
from redis.cluster import RedisCluster

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


def check_commit_logs(client: redis.Redis, settings: Settings) -> int:
    """Every partition's commit log of every partitioned stage: batches follow each other without
    overlap, epochs never go back, and each epoch has one owner. Returns how many epochs there were."""
    keys = Keys(settings.namespace)
    epochs = 0
    for stage in (s for s in PIPELINE if s.partitioned):
        for unit in stage.units(settings):
            owners: dict[int, bytes] = {}
            last_epoch, last_id = 0, (0, 0)
            for _, flat in read_stream(client, keys.partition(unit).commits(stage.name)):
                record = dict(zip(flat[::2], flat[1::2], strict=True))
                epoch, owner = int(record[b"epoch"]), record[b"owner"]
                first, last = (stream_id(record[b"first"]), stream_id(record[b"last"]))
                where = f"{stage.name} partition {unit} epoch {epoch}"
                assert epoch >= last_epoch, f"{where}: committed after epoch {last_epoch}"
                assert owners.setdefault(epoch, owner) == owner, f"{where}: two owners {owners[epoch]!r}, {owner!r}"
                assert last_id < first <= last, f"{where}: batch {first}..{last} overlaps what ended at {last_id}"
                last_epoch, last_id = epoch, last
            epochs += len(owners)
    return epochs


def stream_id(text: bytes) -> tuple[int, int]:
    ms, seq = text.split(b"-")
    return int(ms), int(seq)


def lease_ran_out(settings: Settings, stage: str, unit: int) -> bool:
    """Whether the lease of `stage` on partition `unit` has run out (or was never taken), by the server's clock."""
    with redis.Redis.from_url(settings.redis_url) as client:
        lease = next(s for s in PIPELINE if s.name == stage).lease_key(Keys(settings.namespace), unit)
        until = int(client.hget(lease, "until") or 0)
        seconds, micros = client.time()
    return until < seconds * 1000 + micros // 1000


def open_client(url: str) -> redis.Redis | RedisCluster:
    """A redis-py client of the server at ``url``; of the whole cluster when it is a cluster node
    (every key then reaches its own node: a single-node client would get MOVED)."""
    client = redis.Redis.from_url(url)
    try:
        if not client.info("cluster").get("cluster_enabled"):
            return client
    except redis.ResponseError:
        return client
    client.close()
    cluster = RedisCluster.from_url(url)
    # read_stream wants XRANGE's reply as sent: a cluster applies its callbacks after each node's own.
    for node in cluster.get_nodes():
        assert node.redis_connection is not None
        node.redis_connection.set_response_callback("XRANGE", lambda reply, **_: reply)
    return cluster
