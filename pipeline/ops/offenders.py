"""The offender tables on one server and on Redis Cluster.

The aggregator keeps offender buckets per partition (``<ns>:{p}:offenders:...``, Space-Saving
sorted sets, agents/fraud.lua ``offend``). ``fraud_offenders`` adds up the buckets of the
prefixes it is given as KEYS; one call over every partition's prefix is refused on a cluster
(CROSSSLOT: the partitions' slots lie on different shards). Two reads that work on both:

- ``read_offenders``, for operators (``fraud offenders``): one call per partition, every member
  of each, added up here. The same answer as one call over every partition on one server:
  exact as the buckets are, as fresh as the aggregator.
- ``merge_offenders``, for the dashboard: every partition's buckets summed into one sorted set per
  bucket under ``Keys.merged_offenders_prefix`` (one hash tag, one slot), which the dashboard
  reads with one ``fraud_offenders`` call of one key on either deployment. The monitor agent
  merges, each tick, the buckets the aggregator can have changed since its last tick (from the
  arrival times of the verdicts it counted meanwhile: a click's event time lies within
  ``[arrival - H, arrival + F]``, settings ``dedup_horizon_ms``/``max_future_ms``), and at its
  start every bucket of the retention. A merged bucket holds the K (``FRAUD_OFFENDERS_PER_BUCKET``)
  members with the largest sums of the partitions' counts at its merge, at most one monitor tick
  late: the exact sum of them all whenever it has at most K members.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from agents.aggregator import OFFENDERS, offender_spans
from pipeline.client.cluster import ClusterClient
from pipeline.client.functions import LIBRARY_NAME, NOT_READY_PREFIX
from pipeline.client.resp import RespClient, RespError
from pipeline.core.errors import FraudError
from pipeline.core.keys import OFFENDER_DIMENSIONS, VERDICTS, Keys
from pipeline.core.replies import first_value
from pipeline.core.settings import Settings
from pipeline.core.stream_ids import parse_id

FLAGGED: tuple[str, ...] = VERDICTS[1:]
# Members a per-partition read returns: all of them, so that sums over partitions are exact (an
# address's counts are spread over every partition; its rank in one says nothing of its total).
EVERY_MEMBER = 1 << 40
# A merged bucket is written whole under this suffix, then renamed over the one read: a read
# never sees half a bucket.
NEXT_SUFFIX = ":next"

Client = RespClient | ClusterClient


def offenders_argv(settings: Settings, prefixes: Sequence[str], dimension: str, from_ms: int, to_ms: int,
                   limit: int) -> list[Any]:
    """``FCALL_RO fraud_offenders`` over the buckets under ``prefixes``, as the dashboard calls it."""
    fine_ms, coarse_ms = offender_spans(settings)
    argv = OFFENDERS.argv({}, {"dimension": dimension, "verdicts": ",".join(FLAGGED), "from": from_ms,
                               "to": to_ms, "fine_ms": fine_ms, "coarse_ms": coarse_ms,
                               "max_range_ms": settings.series_retention_ms, "limit": limit})
    return ["FCALL_RO", argv[1], len(prefixes), *prefixes, *argv[3:]]


def ranked(rows: Iterable[dict[str, Any]], dimension: str, limit: int) -> list[dict[str, Any]]:
    """Rows of one member each, summed per member over the partitions, heaviest first (ties by name,
    as ``fraud_offenders`` orders them), the columns in its order."""
    totals: dict[str, dict[str, int]] = {}
    for row in rows:
        member = totals.setdefault(row[dimension], dict.fromkeys(("flagged clicks", *FLAGGED), 0))
        for column in member:
            member[column] += int(row.get(column, 0))
    order = sorted(totals, key=lambda m: (-totals[m]["flagged clicks"], m))[:limit]
    return [{dimension: m, **totals[m]} for m in order]


async def read_offenders(client: Client, settings: Settings, dimension: str, from_ms: int, to_ms: int,
                         limit: int, partitions: int) -> list[dict[str, Any]]:
    """The top ``limit`` members over [from, to]: every partition read on its own node, all at once."""
    keys = Keys(settings.namespace)
    replies = await client.pipeline([
        offenders_argv(settings, [part.offenders_prefix], dimension, from_ms, to_ms, EVERY_MEMBER)
        for part in keys.partitions(partitions)])
    for reply in replies:
        if isinstance(reply, RespError):
            if str(reply).startswith(NOT_READY_PREFIX):
                raise FraudError(f"the '{LIBRARY_NAME}' function library is not loaded: an admin runs `fraud setup`")
            raise reply
    return ranked((orjson.loads(row) for reply in replies for row in reply), dimension, limit)


def bucket_starts(lo_ms: int, hi_ms: int, span_ms: int) -> range:
    """The starts of the buckets of one span that overlap [lo, hi]."""
    return range(lo_ms - lo_ms % span_ms, hi_ms + 1, span_ms)


async def merge_offenders(client: Client, settings: Settings, partitions: int, lo_ms: int, hi_ms: int,
                          skip_empty_hours: bool = False) -> int:
    """Sum every partition's buckets overlapping event times [lo, hi] into the merged ones; returns
    how many merged buckets changed. ``skip_empty_hours``: fine buckets only inside the coarse ones
    that hold something (a minute's members are in its hour's): a cheap catch-up over days."""
    fine_ms, coarse_ms = offender_spans(settings)
    hours = list(bucket_starts(lo_ms, hi_ms, coarse_ms))
    changed = await _merge(client, settings, partitions, [(coarse_ms, hour) for hour in hours])
    if skip_empty_hours:
        keys = Keys(settings.namespace)
        kinds = [(d, v) for d in OFFENDER_DIMENSIONS for v in FLAGGED]
        held = await client.pipeline([("EXISTS", keys.merged_offenders(d, v, coarse_ms, hour))
                                      for hour in hours for d, v in kinds]) if hours else []
        fine = [(fine_ms, s) for at, hour in enumerate(hours) if any(held[at * len(kinds):(at + 1) * len(kinds)])
                for s in bucket_starts(max(lo_ms, hour), min(hi_ms, hour + coarse_ms - 1), fine_ms)]
    else:
        fine = [(fine_ms, s) for s in bucket_starts(lo_ms, hi_ms, fine_ms)]
    return changed + await _merge(client, settings, partitions, fine)


async def _merge(client: Client, settings: Settings, partitions: int, buckets: list[tuple[int, int]]) -> int:
    keys = Keys(settings.namespace)
    parts = keys.partitions(partitions)
    cells = [(d, v, span, start) for span, start in buckets for d in OFFENDER_DIMENSIONS for v in FLAGGED]
    reads = []
    for d, v, span, start in cells:
        reads += [("ZRANGE", part.offenders(d, v, span, start), 0, -1, "WITHSCORES") for part in parts]
        reads.append(("ZRANGE", keys.merged_offenders(d, v, span, start), 0, -1, "WITHSCORES"))
    replies = await client.pipeline(reads)
    writes: list[tuple[Any, ...]] = []
    changed = 0
    for at, (d, v, span, start) in enumerate(cells):
        group = replies[at * (len(parts) + 1):(at + 1) * (len(parts) + 1)]
        summed: dict[bytes, int] = {}
        for flat in group[:-1]:
            for member, score in zip(flat[::2], flat[1::2], strict=True):
                summed[member] = summed.get(member, 0) + int(float(score))
        if len(summed) > settings.offenders_per_bucket:
            # As small as a partition's bucket: the heaviest K sums (ties by name), so that the
            # merged buckets never take P times the partitions' memory (~80 KiB a bucket of 800).
            kept = sorted(summed, key=lambda member: (-summed[member], member))[:settings.offenders_per_bucket]
            summed = {member: summed[member] for member in kept}
        merged = {member: int(float(score)) for member, score in zip(group[-1][::2], group[-1][1::2], strict=True)}
        if summed == merged:
            continue
        changed += 1
        key = keys.merged_offenders(d, v, span, start)
        if not summed:
            writes.append(("DEL", key))
            continue
        following = key + NEXT_SUFFIX
        writes += [("DEL", following),
                   ("ZADD", following, *(word for member, n in summed.items() for word in (n, member)))]
        if settings.series_retention_ms > 0:
            # Expires with the partitions' buckets: a retention after the bucket's end.
            writes.append(("PEXPIREAT", following, start + span + settings.series_retention_ms))
        writes.append(("RENAME", following, key))
    for reply in await client.pipeline(writes) if writes else ():
        # A bucket whose expiry passed meanwhile is gone before its RENAME: nothing to show anyway.
        if isinstance(reply, RespError) and "no such key" not in str(reply):
            raise reply
    return changed


async def counted_arrivals(client: Client, settings: Settings, before: dict[int, str | None],
                           after: dict[int, str | None]) -> tuple[int, int] | None:
    """The event times the aggregator can have counted between two of its positions per partition
    (``before`` None: from the start): from the arrivals (raw ids) of the first and last verdict
    counted, widened by how far a click's time may lie from its arrival. None when none was counted."""
    keys = Keys(settings.namespace)
    moved = [p for p, position in after.items() if position is not None and position != before.get(p)]
    if not moved:
        return None
    reads = []
    for p in moved:
        verdicts = keys.partition(p).verdicts
        start = f"({before[p]}" if before.get(p) else "-"
        reads += [("XRANGE", verdicts, start, after[p], "COUNT", 1),
                  ("XREVRANGE", verdicts, after[p], start, "COUNT", 1)]
    arrivals = []
    for entries in await client.pipeline(reads):
        if isinstance(entries, RespError):
            raise entries  # not skipped: that partition's changes would never be merged
        if not entries:
            continue
        raw_id = first_value(entries[0][1], b"raw_id", None)
        arrivals.append(parse_id((raw_id or entries[0][0]).decode())[0])
    if not arrivals:
        return None
    return min(arrivals) - settings.dedup_horizon_ms, max(arrivals) + settings.max_future_ms
