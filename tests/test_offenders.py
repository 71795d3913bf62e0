"""Offenders per time bucket: written in the aggregator's atomic step, read over any range.

The aggregator keeps, per flagged verdict and dimension (device_id, ip), a Space-Saving summary
per minute and per hour; ``fraud_offenders`` merges the buckets covering a range. These tests
check the answer against the verdict stream itself, the bound on memory, and the expiry.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import replace
from typing import Any

import redis

from agents.aggregator import offender_spans
from pipeline.client.connection import open_fast_client
from pipeline.core.keys import OFFENDER_DIMENSIONS, VERDICTS, Keys
from pipeline.core.partitions import partition_of
from pipeline.core.settings import Settings
from pipeline.ops.monitor_upkeep import Upkeep
from pipeline.ops.offenders import offenders_argv
from pipeline.ops.offenders import read_offenders as ops_read
from pipeline.ops.status import open_status_client, snapshot
from tests.arrival import xadd_at_event_time
from tests.helpers import list_ips, one_device_per_partition, run_pipeline, stream_entries

MINUTE_MS, HOUR_MS = 60_000, 3_600_000
FLAGGED = VERDICTS[1:]
LISTED_IP = "203.0.113.9"


def offenders_command(settings: Settings, dimension: str, from_ms: int, to_ms: int, limit: int,
                      merged: bool = False) -> list[str]:
    """A read of the offenders (FCALL_RO: it writes nothing): over every partition's offender prefix
    (one server only), or over the monitor's merged buckets (``merged``: the dashboard's read)."""
    keys = Keys(settings.namespace)
    prefixes = [keys.merged_offenders_prefix] if merged else [
        part.offenders_prefix for part in keys.partitions(settings.partitions)]
    return [str(word) for word in offenders_argv(settings, prefixes, dimension, from_ms, to_ms, limit)]


def read_offenders(settings: Settings, dimension: str, from_ms: int, to_ms: int, limit: int = 1_000) -> list[Any]:
    """The dashboard's read, each row parsed."""
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        return [json.loads(row) for row in client.execute_command(
            *offenders_command(settings, dimension, from_ms, to_ms, limit))]


def spam_bursts(t0: int, minutes: int) -> list[list[str]]:
    """Each minute one device sends 4 clicks in one second (the last 2 are click_spam) and one
    click comes from the listed IP: flagged clicks in every minute, from a few devices and IPs."""
    clicks = []
    for m in range(minutes):
        at = t0 + m * MINUTE_MS + 1_000 * (m % 50)
        device = f"d{m % 7}"
        clicks += [["device_id", device, "ip", f"10.9.{m % 3}.1", "ts", str(at + k)] for k in range(4)]
        clicks.append(["device_id", f"L{m % 4}", "ip", LISTED_IP, "ts", str(at + 10)])
    return clicks


def exact_offenders(settings: Settings, dimension: str, lo_ms: int, hi_ms: int) -> dict[str, dict[str, int]]:
    """From the verdict stream: flagged clicks per member and verdict with ts in [lo, hi)."""
    out: dict[str, Counter[str]] = {}
    for _, fields in verdict_entries(settings):
        if fields["verdict"] in FLAGGED and lo_ms <= int(fields["ts"]) < hi_ms:
            out.setdefault(fields[dimension], Counter())[fields["verdict"]] += 1
    return {member: {v: counts[v] for v in FLAGGED} for member, counts in out.items()}


def verdict_entries(settings: Settings) -> list[tuple[str, dict[str, str]]]:
    """Every partition's verdicts: an address's clicks come from devices of many partitions."""
    return [e for part in Keys(settings.namespace).partitions(settings.partitions)
            for e in stream_entries(settings, part.verdicts)]


async def feed(settings: Settings, t0: int, minutes: int) -> None:
    await list_ips(settings, [LISTED_IP])
    xadd_at_event_time(settings, spam_bursts(t0, minutes))
    await run_pipeline(settings)


async def test_offenders_over_a_range_are_the_exact_flagged_counts(settings: Settings) -> None:
    # 150 minutes from half past an hour: a range over them has partial hours at both edges.
    now = int(time.time() * 1000)
    t0 = (now - 4 * HOUR_MS) // HOUR_MS * HOUR_MS + 30 * MINUTE_MS
    await feed(settings, t0, 150)
    for from_ms, to_ms in ((t0 + 17 * MINUTE_MS + 123, t0 + 140 * MINUTE_MS + 5),  # edges, 1 whole hour
                           (t0 - HOUR_MS, now),                                     # everything
                           (t0 + 3 * MINUTE_MS, t0 + 3 * MINUTE_MS + 10)):           # inside one minute
        lo, hi = from_ms - from_ms % MINUTE_MS, to_ms - to_ms % MINUTE_MS + MINUTE_MS
        for dimension in OFFENDER_DIMENSIONS:
            expected = exact_offenders(settings, dimension, lo, hi)
            assert expected, "the range must hold flagged clicks"
            rows = read_offenders(settings, dimension, from_ms, to_ms)
            assert [list(r) for r in rows] == [[dimension, "flagged clicks", *FLAGGED]] * len(rows), "column order"
            got = {r[dimension]: {v: r[v] for v in FLAGGED} for r in rows}
            assert got == expected, (dimension, from_ms, to_ms)
            assert all(r["flagged clicks"] == sum(got[r[dimension]].values()) for r in rows)
            totals = [(-r["flagged clicks"], r[dimension]) for r in rows]
            assert totals == sorted(totals), "heaviest first, ties by name"
    assert [r["ip"] for r in read_offenders(settings, "ip", t0, now, limit=1)] == [LISTED_IP]


async def test_an_empty_pipeline_has_no_offenders(settings: Settings) -> None:
    assert read_offenders(settings, "device_id", 0, int(time.time() * 1000)) == []


async def test_a_bucket_keeps_at_most_its_bound_and_the_heavy_hitters(settings: Settings) -> None:
    settings = replace(settings, offenders_per_bucket=5)
    now = int(time.time() * 1000)
    minute = (now - 10 * MINUTE_MS) // MINUTE_MS * MINUTE_MS
    # In one minute and one partition (a bucket is a partition's): one heavy device (40 flagged
    # clicks) among 60 devices with 2 flagged clicks each.
    home = partition_of("heavy", settings.partitions)
    lights = [d for d in (f"light{n}" for n in range(100 * settings.partitions))
              if partition_of(d, settings.partitions) == home][:60]
    assert len(lights) == 60
    clicks = [["device_id", "heavy", "ip", "10.0.0.1", "ts", str(minute + 100 + k)] for k in range(42)]
    for d, device in enumerate(lights):
        clicks += [["device_id", device, "ip", "10.0.0.2", "ts", str(minute + 1_000 + d * 100 + k)]
                   for k in range(4)]
    xadd_at_event_time(settings, sorted(clicks, key=lambda c: int(c[-1])))
    await run_pipeline(settings)
    flagged = 40 + 60 * 2
    keys = Keys(settings.namespace)
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        part = keys.partition(home)
        for span in offender_spans(settings):
            key = part.offenders("device_id", "click_spam", span, minute - minute % span)
            members = dict(client.zrange(key, 0, -1, withscores=True))
            assert len(members) == 5, "the bound"
            # Space-Saving: the counts sum to the bucket's flagged clicks; each is over-stated by at
            # most flagged / bound, so a member with more than that share is always kept.
            assert sum(members.values()) == flagged
            assert 40 <= members["heavy"] <= 40 + flagged / 5
            ttl = client.pttl(key)
            expires = minute - minute % span + span + settings.series_retention_ms
            assert expires - int(time.time() * 1000) <= ttl <= expires - now, "a retention after its end"
    (top,) = read_offenders(settings, "device_id", minute, minute + 1, limit=1)
    assert top["device_id"] == "heavy"


async def merged_after_tick(settings: Settings, upkeep: Upkeep) -> None:
    """One monitor tick's upkeep, on a fresh snapshot (as the monitor agent runs it)."""
    client = await open_status_client(settings)
    try:
        await upkeep.run(client, await snapshot(client, Keys(settings.namespace)))
    finally:
        await client.aclose()


async def test_the_merged_buckets_and_the_per_partition_read_give_the_one_call_answer(settings: Settings) -> None:
    """What the dashboard reads on either deployment (the monitor's merged buckets, one key) and
    what `fraud offenders` reads (one call per partition) equal one call over every partition,
    after the first tick (a catch-up over the retention) and after a later one (only the buckets
    the aggregator's progress can have changed: arrivals hours before the server's clock too)."""
    now = int(time.time() * 1000)
    t0 = (now - 4 * HOUR_MS) // HOUR_MS * HOUR_MS + 30 * MINUTE_MS
    upkeep = Upkeep(settings)
    fast = await open_fast_client(settings)
    try:
        for first, minutes in ((0, 70), (70, 40)):
            xadd_at_event_time(settings, spam_bursts(t0 + first * MINUTE_MS, minutes))
            if first == 0:
                await list_ips(settings, [LISTED_IP])
            await run_pipeline(settings)
            await merged_after_tick(settings, upkeep)
            for from_ms, to_ms in ((t0 - HOUR_MS, now), (t0 + 17 * MINUTE_MS + 5, t0 + 95 * MINUTE_MS)):
                for dimension in OFFENDER_DIMENSIONS:
                    whole = read_offenders(settings, dimension, from_ms, to_ms, limit=5)
                    assert whole, "the range must hold flagged clicks"
                    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
                        merged = [json.loads(row) for row in client.execute_command(
                            *offenders_command(settings, dimension, from_ms, to_ms, 5, merged=True))]
                    assert merged == whole, (first, dimension, from_ms, to_ms)
                    assert await ops_read(fast, settings, dimension, from_ms, to_ms, 5, settings.partitions) == whole
        assert upkeep.positions is not None
    finally:
        await upkeep.close()
        await fast.close()


async def test_a_merged_bucket_keeps_the_heaviest_sums_within_the_bound(settings: Settings) -> None:
    """Partitions with few members each (exact), together more than K: the merged bucket keeps the
    K heaviest sums (ties by name), so it takes no more memory than a partition's."""
    settings = replace(settings, offenders_per_bucket=5)
    now = int(time.time() * 1000)
    minute = (now - 10 * MINUTE_MS) // MINUTE_MS * MINUTE_MS
    lights = [*one_device_per_partition("light", settings.partitions),
              *one_device_per_partition("pale", settings.partitions)]
    clicks = [["device_id", "heavy", "ip", "10.0.0.1", "ts", str(minute + 100 + k)] for k in range(12)]
    for d, device in enumerate(lights):
        clicks += [["device_id", device, "ip", "10.0.0.2", "ts", str(minute + 1_000 + d * 100 + k)] for k in range(4)]
    xadd_at_event_time(settings, sorted(clicks, key=lambda c: int(c[-1])))
    await run_pipeline(settings)
    await merged_after_tick(settings, Upkeep(settings))
    keys = Keys(settings.namespace)
    fine_ms, _ = offender_spans(settings)
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        merged = client.zrange(f"{keys.merged_offenders_prefix}device_id:click_spam:{fine_ms}:{minute}", 0, -1,
                               withscores=True)
    # heavy: 10 flagged; each light and pale device 2; ties kept by name.
    assert merged == sorted([("heavy", 10.0), *((d, 2.0) for d in sorted(lights)[:4])], key=lambda m: (m[1], m[0]))
