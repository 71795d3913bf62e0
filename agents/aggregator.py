"""The aggregator stage: verdicts in, per-verdict RedisTimeSeries counts out.

Counts are pre-aggregated per batch into (verdict, event-time bucket) cells and
written as ``TS.ADD ... ON_DUPLICATE SUM`` samples, one per cell, in the same
atomic call as the XACK: summing a series over all time gives exactly the
number of verdicts, and a replay of the same clicks lands in the same buckets.
A batch with a sample the series would refuse as older than its retention fails
whole and loudly (never acknowledged as counted): the settings keep every
accepted click's event time well inside the retention, so it means the
aggregator fell about a retention behind.

Offenders are counted in the same step: per flagged verdict, per dimension (device_id, ip), per
event-time bucket of one minute and of one hour, a sorted set keeps the heaviest members as a
Space-Saving summary of at most FRAUD_OFFENDERS_PER_BUCKET members (see ``offend`` in
agents/fraud.lua). The dashboard reads them over its range with ``fraud_offenders``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from pipeline.client.create import create_once, ensure_series
from pipeline.client.resp import RespClient
from pipeline.client.step import Section, Step
from pipeline.core.keys import OFFENDER_DIMENSIONS, VERDICTS, Keys
from pipeline.core.settings import Settings
from pipeline.core.stream_ids import batch_bounds
from pipeline.runtime.agent import Rejection, fenced_ids, reject
from pipeline.runtime.stage import BatchContext, Entry
from schemas.verdict import InvalidVerdict, verdict_index_and_time


def series_name(verdict: str) -> str:
    """How fraud_aggregate names a verdict's series among its keys."""
    return f"series:{verdict}"


# fraud_aggregate in agents/fraud.lua, declared once: it reads every name below by name.
AGGREGATE = Step(
    "fraud_aggregate",
    params=("group", "consumer", "stage", "lo", "hi", "retention_ms", "fine_ms", "coarse_ms", "offenders_cap"),
    keys=("verdicts", "stats", "offenders", *(series_name(v) for v in VERDICTS)),
    sections=(Section("entries", ("id",)), Section("cells", ("verdict", "bucket", "count")),
              Section("offenders", ("dimension", "verdict", "bucket", "member", "count"))))

# fraud_offenders in agents/fraud.lua, read-only: the dashboard's offender tables call it (FCALL_RO).
OFFENDERS = Step(
    "fraud_offenders", keys=("offenders",),
    params=("dimension", "verdicts", "from", "to", "fine_ms", "coarse_ms", "max_range_ms", "limit"))


def offender_spans(settings: Settings) -> tuple[int, int]:
    """The two offender bucket spans: the rollup bucket (a minute) for a range's edges, and
    sixty of them (an hour) for its whole hours, so a week's range reads ~300 buckets."""
    return settings.rollup_bucket_ms, 60 * settings.rollup_bucket_ms


def field_value(flat: list[bytes], name: bytes) -> bytes:
    names = flat[::2]
    return flat[2 * names.index(name) + 1] if name in names else b""


async def ensure_verdict_series(client: RespClient, keys: Keys, settings: Settings) -> None:
    """One raw series per verdict, summing duplicates, with a downsampled rollup rule."""
    for verdict in VERDICTS:
        labels = (*keys.series_labels(), "metric", "clicks", "verdict", verdict)
        await ensure_series(client.execute, keys.series(verdict), retention_ms=settings.series_retention_ms,
                            duplicate_policy="SUM", labels=(*labels, "tier", "raw"))
        await ensure_series(client.execute, keys.rollup(verdict), retention_ms=settings.rollup_retention_ms,
                            duplicate_policy="SUM", labels=(*labels, "tier", "rollup"))
        await create_once(client.execute, "TS.CREATERULE", keys.series(verdict), keys.rollup(verdict),
                          "AGGREGATION", "sum", settings.rollup_bucket_ms)


class Aggregator:
    def __init__(self, settings: Settings) -> None:
        self.bucket_ms = settings.bucket_ms
        self.retention_ms = settings.series_retention_ms
        self.max_future_ms = settings.max_future_ms
        self.fine_ms, self.coarse_ms = offender_spans(settings)
        self.offenders_cap = settings.offenders_per_bucket

    async def setup(self, client: RespClient, keys: Keys, settings: Settings) -> None:
        await ensure_verdict_series(client, keys, settings)

    async def handle(self, ctx: BatchContext, entries: Sequence[Entry]) -> list[bytes]:
        cells: Counter[tuple[int, int]] = Counter()
        offenders: Counter[tuple[str, str, int, bytes]] = Counter()
        ids: list[bytes] = []
        rejections: list[Rejection] = []
        bucket = self.bucket_ms
        for entry_id, flat in entries:
            try:
                verdict, ts = verdict_index_and_time(flat, self.max_future_ms)
            except InvalidVerdict as err:
                # Anyone can XADD to the verdict stream: its dead letter is bounded like the detector's.
                rejections.append(Rejection(entry_id, str(err), flat or ()))
                continue
            cells[verdict, ts - ts % bucket] += 1
            ids.append(entry_id)
            if verdict:  # flagged: every verdict but the first (clean)
                minute = ts - ts % self.fine_ms
                for dimension in OFFENDER_DIMENSIONS:
                    offenders[dimension, VERDICTS[verdict], minute, field_value(flat, dimension.encode())] += 1
        lost = await reject(ctx, rejections)
        if not ids:
            return lost
        lo, hi = batch_bounds(ids)
        # Every verdict gets a sample in every bucket that saw a click, zeros included:
        # a series' rollup closes a minute only when that series gets a later sample,
        # so a verdict that stopped would otherwise never have its last minute rolled up.
        samples = [[VERDICTS[verdict], bucket_start, cells.get((verdict, bucket_start), 0)]
                   for bucket_start in {bucket_start for _, bucket_start in cells} for verdict in range(len(VERDICTS))]
        keys = ctx.keys
        reply = await ctx.client.execute(*AGGREGATE.argv(
            {"verdicts": keys.verdicts, "stats": keys.stats, "offenders": keys.offenders_prefix,
             **{series_name(v): keys.series(v) for v in VERDICTS}},
            {"group": ctx.group, "consumer": ctx.consumer, "stage": ctx.stage, "lo": lo, "hi": hi,
             "retention_ms": self.retention_ms, "fine_ms": self.fine_ms, "coarse_ms": self.coarse_ms,
             "offenders_cap": self.offenders_cap},
            {"entries": [[entry_id] for entry_id in ids], "cells": samples,
             "offenders": [[*cell, n] for cell, n in offenders.items()]}))
        return lost + fenced_ids(reply)
