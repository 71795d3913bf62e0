"""The monitor agent: the pipeline's health, recorded as TimeSeries for dashboards.

Grafana's Redis plugin cannot run XINFO GROUPS, so lag and the rest are
sampled here every ``--interval`` seconds from a status snapshot and written
as series labelled ``namespace=<ns> metric=pipeline_health measure=<measure> stage=<stage>``:

- ``lag`` and ``pending`` of each stage (``router``, ``detector``, ``aggregator``), summed over
  its partitions (the router's: of ``clicks:raw``),
- ``throughput`` of each stage, in clicks/s over the last interval,
- ``dead_letters`` (every partition's dead-letter stream, summed) under stage ``dead``.

Each tick it also keeps what the dashboard reads the same way on one server and on a cluster
(``monitor_upkeep``): the merged offender buckets, and RedisTimeSeries' view of the cluster.

It is no consumer-group member: it writes only its series and the merged offender buckets (each
merge a sum of what the partitions hold, so any number may run).
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Mapping
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ResponseError

from agents.pipeline import PIPELINE
from pipeline.client.connection import open_patiently
from pipeline.client.create import ensure_series
from pipeline.client.outage import Outage, T
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.core.signals import release_signals, stop_on_signals
from pipeline.core.units import clock, duration
from pipeline.core.waiting import wait_or_stop
from pipeline.ops.monitor_upkeep import Upkeep
from pipeline.ops.status import open_status_client, read_stats, snapshot

log = structlog.get_logger()

HEALTH_METRIC = "pipeline_health"
DEAD_SUBJECT = "dead"

Sample = tuple[str, str, float]


def health_samples(snap: Mapping[str, Any]) -> list[Sample]:
    """(measure, stage, value) for every health figure a snapshot holds."""
    samples: list[Sample] = []
    for stage in (s.name for s in PIPELINE):
        totals = snap["stages"][stage]["totals"]
        samples += [("lag", stage, totals["lag"]), ("pending", stage, totals["pending"])]
    samples.append(("dead_letters", DEAD_SUBJECT, snap["dead_letters"]["count"]))
    if snap["throughput"] is not None:
        samples += [("throughput", stage, rate)
                    for stage, rate in snap["throughput"]["clicks_per_s"].items() if rate is not None]
    return samples


class HealthRecorder:
    """Writes a tick's samples in one round trip, creating each series on first use."""

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.client = client
        self.keys = Keys(settings.namespace)
        self.retention_ms = settings.series_retention_ms
        self.created: set[str] = set()

    async def create(self, measure: str, stage: str) -> None:
        key = self.keys.health_series(measure, stage)
        await ensure_series(self.client.execute_command, key, retention_ms=self.retention_ms, duplicate_policy="LAST",
                            labels=(*self.keys.series_labels(), "metric", HEALTH_METRIC, "measure", measure,
                                    "stage", stage))
        self.created.add(key)

    async def record(self, samples: list[Sample]) -> None:
        for measure, stage, _ in samples:
            if self.keys.health_series(measure, stage) not in self.created:
                await self.create(measure, stage)
        failed = await self._add_samples(samples)
        if failed:
            # The series vanished since we made them (a flushed or restarted server): make them again, once.
            for measure, stage, _ in failed:
                await self.create(measure, stage)
            still = await self._add_samples(failed)
            if still:
                raise ResponseError(f"TS.ADD refused {len(still)} health samples")

    async def _add_samples(self, samples: list[Sample]) -> list[Sample]:
        # One TS.ADD per sample in one pipeline rather than one TS.MADD: on Redis Cluster the
        # health series lie in different slots, and a multi-key command across slots is refused.
        pipe = self.client.pipeline(transaction=False)
        for measure, stage, value in samples:
            # "*": the server's clock, so samples line up whichever host the monitor runs on.
            pipe.execute_command("TS.ADD", self.keys.health_series(measure, stage), "*", value)
        reply = await pipe.execute(raise_on_error=False)
        return [sample for sample, outcome in zip(samples, reply, strict=True) if isinstance(outcome, Exception)]


async def run_monitor(args: argparse.Namespace, settings: Settings) -> int:
    opening = lambda: open_status_client(settings)  # noqa: E731
    client = await (opening() if args.once else open_patiently(opening, log))
    keys = Keys(settings.namespace)
    recorder = HealthRecorder(client, settings)
    upkeep = Upkeep(settings)
    stop = stop_on_signals()
    log.info("monitor started", interval_s=args.interval, once=args.once)
    outage = Outage()
    ticks = 0
    try:
        # The baseline of the first throughput: every tick's rate covers one whole interval.
        previous: Mapping[str, Any] | None = await _read_or_log(outage, read_stats(client, keys))
        while not stop.is_set():
            await wait_or_stop(stop, args.interval)
            if stop.is_set():
                break
            snap = await _read_or_log(outage, _tick(client, keys, recorder, upkeep, previous))
            if snap is None:
                continue
            previous = snap
            ticks += 1
            if args.once:
                break
    finally:
        release_signals()
        await upkeep.close()
        await client.aclose()
    log.info("monitor stopped", ticks=ticks)
    return 0


async def _tick(client: aioredis.Redis, keys: Keys, recorder: HealthRecorder, upkeep: Upkeep,
                previous: Mapping[str, Any] | None) -> dict[str, Any]:
    snap = await snapshot(client, keys, previous)
    await recorder.record(health_samples(snap))
    await upkeep.run(client, snap)
    return snap


async def _read_or_log(outage: Outage, reading: Awaitable[T]) -> T | None:
    """The reading, or None and a log line while Redis is unavailable (the monitor outlives restarts)."""
    result = await outage.read(reading)
    if result is None:
        log.warning("redis unavailable, retrying next tick", error=outage.reason, since=clock(outage.since_ms))
    elif outage.ended_after_ms is not None:
        log.info("redis reachable again", after=duration(outage.ended_after_ms))
    return result
