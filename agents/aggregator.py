"""The aggregator stage: verdicts in, per-verdict RedisTimeSeries counts out.

Counts are pre-aggregated per batch into (verdict, event-time bucket) cells and
written as ``TS.ADD ... ON_DUPLICATE SUM`` samples, one per cell, to the partition's own
series (labelled with the partition; the dashboard sums them by verdict), in the same
atomic call as the offset's commit: summing a series over all time gives exactly the
number of verdicts, and a replay of the same clicks lands in the same buckets.
A batch with a sample the series would refuse as older than its retention fails
whole and loudly (never acknowledged as counted): the settings keep every
accepted click's event time well inside the retention, so it means the
aggregator fell about a retention behind.

Offenders are counted in the same step: per flagged verdict, per dimension (device_id, ip), per
event-time bucket of one minute and of one hour, a sorted set of the partition keeps the heaviest members as a
Space-Saving summary of at most FRAUD_OFFENDERS_PER_BUCKET members (see ``offend`` in
agents/fraud.lua). The dashboard reads them over its range and every partition with ``fraud_offenders``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from pipeline.client.create import create_once, ensure_series
from pipeline.client.resp import RespClient
from pipeline.client.step import Section, Step, counted
from pipeline.core.keys import OFFENDER_DIMENSIONS, VERDICTS, Keys, PartitionKeys
from pipeline.core.replies import first_value
from pipeline.core.settings import Settings
from pipeline.runtime.stage import BatchContext, Entry
from pipeline.runtime.steps import FENCE_KEYS, FENCE_PARAMS
from schemas.click import FieldLimits
from schemas.dead_letter import bounded_copy
from schemas.verdict import InvalidVerdict, verdict_index_and_time


def series_name(verdict: str) -> str:
    """How fraud_aggregate names a verdict's series among its keys."""
    return f"series:{verdict}"


# fraud_aggregate in agents/fraud.lua, declared once: it reads every name below by name.
AGGREGATE = Step(
    "fraud_aggregate",
    # `counted`: the batch's verdict entries (the cells count them), sent as a number, not one
    # argument each: an argument costs the step more than the rest of an entry's work.
    params=(*FENCE_PARAMS, "counted"),
    config=("retention_ms", "fine_ms", "coarse_ms", "offenders_cap"),
    keys=(*FENCE_KEYS, "dead", "stats", "offenders", *(series_name(v) for v in VERDICTS)),
    sections=(Section("rejects", ("id", "reason", "n")),
              Section("cells", ("verdict", "bucket", "count")),
              Section("offenders", ("dimension", "verdict", "bucket", "member", "count"))))

# fraud_offenders in agents/fraud.lua, read-only: the dashboard's offender tables call it (FCALL_RO)
# with every partition's offender prefix as a key (KEYS beyond these names are read as more prefixes).
OFFENDERS = Step(
    "fraud_offenders", keys=(),
    params=("dimension", "verdicts", "from", "to", "fine_ms", "coarse_ms", "max_range_ms", "limit"))


def offender_spans(settings: Settings) -> tuple[int, int]:
    """The two offender bucket spans: the rollup bucket (a minute) for a range's edges, and
    sixty of them (an hour) for its whole hours, so a week's range reads ~300 buckets."""
    return settings.rollup_bucket_ms, 60 * settings.rollup_bucket_ms


async def ensure_verdict_series(client: RespClient, keys: Keys, partition: PartitionKeys,
                                settings: Settings) -> None:
    """A partition's raw series per verdict, summing duplicates, with a downsampled rollup rule
    (the two in the partition's slot, as a compaction rule requires on Redis Cluster)."""
    for verdict in VERDICTS:
        labels = (*keys.series_labels(), "partition", str(partition.number), "metric", "clicks", "verdict", verdict)
        await ensure_series(client.execute, partition.series(verdict), retention_ms=settings.series_retention_ms,
                            duplicate_policy="SUM", labels=(*labels, "tier", "raw"))
        await ensure_series(client.execute, partition.rollup(verdict), retention_ms=settings.rollup_retention_ms,
                            duplicate_policy="SUM", labels=(*labels, "tier", "rollup"))
        await create_once(client.execute, "TS.CREATERULE", partition.series(verdict), partition.rollup(verdict),
                          "AGGREGATION", "sum", settings.rollup_bucket_ms)


class Aggregator:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limits = FieldLimits(settings.max_field_count, settings.max_field_bytes)
        self.bucket_ms = settings.bucket_ms
        self.max_future_ms = settings.max_future_ms
        self.fine_ms, coarse_ms = offender_spans(settings)
        self.config = AGGREGATE.pack_config({"retention_ms": settings.series_retention_ms, "fine_ms": self.fine_ms,
                                             "coarse_ms": coarse_ms, "offenders_cap": settings.offenders_per_bucket})

    async def setup(self, client: RespClient, keys: Keys, partition: PartitionKeys | None) -> None:
        assert partition is not None
        await ensure_verdict_series(client, keys, partition, self.settings)

    async def handle(self, ctx: BatchContext, entries: Sequence[Entry]) -> list[bytes]:
        cells: Counter[tuple[int, int]] = Counter()
        offenders: Counter[tuple[str, str, int, bytes]] = Counter()
        counted_entries = 0
        rejects: list[list[object]] = []
        bucket = self.bucket_ms
        for entry_id, flat in entries:
            try:
                verdict, ts = verdict_index_and_time(flat, self.max_future_ms)
            except InvalidVerdict as err:
                # Anyone can XADD to a verdict stream: its dead letter is bounded like the detector's.
                reason, copy = bounded_copy(str(err), flat, self.limits)
                rejects.append(counted((entry_id, reason), copy))
                continue
            cells[verdict, ts - ts % bucket] += 1
            counted_entries += 1
            if verdict:  # flagged: every verdict but the first (clean)
                minute = ts - ts % self.fine_ms
                for dimension in OFFENDER_DIMENSIONS:
                    offenders[dimension, VERDICTS[verdict], minute, first_value(flat, dimension.encode(), b"")] += 1
        # Every verdict gets a sample in every bucket that saw a click, zeros included:
        # a series' rollup closes a minute only when that series gets a later sample,
        # so a verdict that stopped would otherwise never have its last minute rolled up.
        samples = [[VERDICTS[verdict], bucket_start, cells.get((verdict, bucket_start), 0)]
                   for bucket_start in {bucket_start for _, bucket_start in cells} for verdict in range(len(VERDICTS))]
        part = ctx.partition
        assert part is not None
        fence_keys, fence_params = ctx.fence(entries)
        reply = await ctx.client.execute(*AGGREGATE.argv(
            {**fence_keys, "dead": part.dead, "stats": part.stats, "offenders": part.offenders_prefix,
             **{series_name(v): part.series(v) for v in VERDICTS}},
            {**fence_params, "counted": counted_entries},
            {"rejects": rejects, "cells": samples,
             "offenders": [[*cell, n] for cell, n in offenders.items()]}, self.config))
        return ctx.outcome(reply)
