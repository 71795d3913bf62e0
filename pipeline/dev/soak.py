"""``fraud soak``: push many clicks through short retention and watch Redis memory stay flat.

It starts an embedded Redis Stack of its own (as ``fraud bench`` does), runs the
router, a detector and an aggregator with short retention (streams trimmed after a few
seconds, device windows forgotten within two ``dedup_horizon_ms``), feeds N clicks
at a steady rate and samples ``INFO memory`` every second. Memory that still
grows after the warm-up is a leak: the report gives its slope per 100k clicks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil

from agents.pipeline import PIPELINE
from pipeline.client.cluster import ClusterClient, every_master
from pipeline.client.connection import open_fast_client
from pipeline.client.resp import RespClient
from pipeline.core.keys import Keys
from pipeline.core.replies import pairs
from pipeline.core.settings import Settings
from pipeline.dev.bench import group_exists, spawn_cli, stop_processes
from pipeline.dev.redis_probe import info_fields
from pipeline.ops.partition_reads import pipeline_drained, stats_totals

# Short retention, so that a steady state is reached within seconds, not hours.
RETENTION_ENV: dict[str, str] = {
    "FRAUD_STREAM_KEEP_MS": "2000",
    "FRAUD_DEAD_KEEP_MS": "10000",
    "FRAUD_DEDUP_HORIZON_MS": "20000",
    "FRAUD_MAX_FUTURE_MS": "1000",
    "FRAUD_MAINTENANCE_INTERVAL_MS": "1000",
    # The rules' lookbacks no longer than the spam window, so that a device's state goes with its window.
    "FRAUD_ROBOTIC_LOOKBACK_MS": "10000",
    "FRAUD_TRAVEL_LOOKBACK_MS": "10000",
}
# Memory before this share of the clicks is warm-up: windows fill, streams reach their trimmed size.
WARM_UP_SHARE = 0.25


@dataclass
class Sample:
    at_s: float
    used_memory: int
    produced: int
    raw_len: int
    verdicts_len: int
    # Summed over the partitions: the routed clicks not yet trimmed.
    input_len: int = 0

    @property
    def in_flight(self) -> int:
        return self.raw_len + self.input_len + self.verdicts_len


@dataclass
class SoakResult:
    clicks: int
    seconds: float
    samples: list[Sample]
    baseline_memory: int
    end_memory: int
    stream_lengths: dict[str, int]
    window_keys: int
    stats: dict[str, int] = field(default_factory=dict)

    def warm(self) -> list[Sample]:
        return [s for s in self.samples if s.produced >= WARM_UP_SHARE * self.clicks] or self.samples[-1:]

    def slope_per_100k(self) -> float:
        """Least-squares bytes of used_memory per 100k clicks produced, after the warm-up."""
        warm = self.warm()
        if len(warm) < 2:
            return 0.0
        xs = [s.produced for s in warm]
        ys = [s.used_memory for s in warm]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        spread = sum((x - mx) ** 2 for x in xs)
        return 0.0 if spread == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / spread * 1e5

    def bytes_per_click_in_flight(self) -> float:
        """Memory above the empty server per entry held in the streams, averaged after the warm-up."""
        ratios = [(s.used_memory - self.baseline_memory) / s.in_flight for s in self.warm() if s.in_flight > 0]
        return sum(ratios) / len(ratios) if ratios else 0.0

    def summary(self) -> dict[str, Any]:
        warm = self.warm()
        return {
            "clicks": self.clicks,
            "seconds": round(self.seconds, 1),
            "clicks_per_s": round(self.clicks / self.seconds) if self.seconds else 0,
            "memory_baseline_bytes": self.baseline_memory,
            "memory_after_warm_up_bytes": warm[0].used_memory,
            "memory_end_bytes": self.end_memory,
            "memory_peak_bytes": max(s.used_memory for s in self.samples),
            "slope_bytes_per_100k_clicks": round(self.slope_per_100k()),
            "bytes_per_click_in_flight": round(self.bytes_per_click_in_flight(), 1),
            "stream_lengths_at_end": self.stream_lengths,
            "window_keys_at_end": self.window_keys,
            "stats": self.stats,
        }


def _spawn(settings: Settings, env: Mapping[str, str], name: str, *argv: str) -> psutil.Popen:
    return spawn_cli(settings, f"soak-{name}", *argv, env=env)


async def _used_memory(client: RespClient | ClusterClient) -> int:
    """Redis memory in use, over every master: on a cluster a keyless INFO reaches one master only."""
    return sum([int((await info_fields(node, "memory"))["used_memory"]) for node in every_master(client)])


async def _partition_lengths(client: RespClient, keys: Keys, partitions: int, stream: str) -> int:
    """The entries of one stream (`input`, `verdicts`, `dead`), summed over the partitions."""
    return sum(int(n) for n in await client.pipeline(
        [("XLEN", getattr(part, stream)) for part in keys.partitions(partitions)]))


async def _sample(client: RespClient, keys: Keys, partitions: int, started: float) -> Sample:
    replies = await client.pipeline([("XINFO", "STREAM", keys.raw), ("XLEN", keys.raw)])
    info = replies[0]
    produced = 0 if isinstance(info, Exception) else int(pairs(info)[b"entries-added"])
    return Sample(time.monotonic() - started, await _used_memory(client), produced, int(replies[1]),
                  await _partition_lengths(client, keys, partitions, "verdicts"),
                  await _partition_lengths(client, keys, partitions, "input"))


async def _count_keys(client: RespClient, pattern: str) -> int:
    """Live keys matching a pattern (SCAN skips keys that have expired)."""
    cursor, total = b"0", 0
    while True:
        cursor, found = await client.execute("SCAN", cursor, "MATCH", pattern, "COUNT", 10_000)
        total += len(found)
        if cursor == b"0":
            return total


async def count_window_keys(client: RespClient | ClusterClient, keys: Keys, partitions: int) -> int:
    """Device windows alive in every partition (SCAN sees one node's keys: each master is asked)."""
    return sum([await _count_keys(node, part.window_prefix + "*")
                for node in every_master(client) for part in keys.partitions(partitions)])


async def soak(settings: Settings, clicks: int, rate: float, *, env: Mapping[str, str] = RETENTION_ENV,
               settle_s: float = 4.0, timeout: float = 1800.0) -> SoakResult:
    """Run the pipeline over ``clicks`` clicks at ``rate`` and sample memory; ``settle_s`` after the
    last count lets maintenance trim the tails before the end figures are taken."""
    keys = Keys(settings.namespace)
    partitions = settings.partitions
    client = await open_fast_client(settings)
    processes: list[psutil.Popen] = []
    try:
        baseline = await _used_memory(client)
        processes += [_spawn(settings, env, stage.name, "agent", stage.name) for stage in PIPELINE]
        # Every input taken by its stage (its group made by its owner) before clicks come.
        for stage in PIPELINE:
            for unit in stage.units(settings):
                while not await group_exists(client, stage.input_stream(keys, unit), stage.name):
                    await asyncio.sleep(0.05)
        started = time.monotonic()
        producer = _spawn(settings, env, "producer", "agent", "generator", "--rate", str(rate),
                          "--total", str(clicks), "--seed", "7")
        processes.append(producer)
        samples: list[Sample] = []
        while True:
            samples.append(await _sample(client, keys, partitions, started))
            if producer.poll() is not None and await pipeline_drained(client, keys, partitions):
                break
            if time.monotonic() - started > timeout:
                raise TimeoutError("the soak did not finish in time")
            if any(p.poll() not in (None, 0) for p in processes):
                raise RuntimeError("an agent of the soak exited with an error")
            await asyncio.sleep(1.0)
        seconds = time.monotonic() - started
        await asyncio.sleep(settle_s)
        end = await _sample(client, keys, partitions, started)
        return SoakResult(
            clicks=clicks, seconds=seconds, samples=samples, baseline_memory=baseline,
            end_memory=end.used_memory,
            stream_lengths={"raw": end.raw_len, "input": end.input_len, "verdicts": end.verdicts_len,
                            "dead": await _partition_lengths(client, keys, partitions, "dead")},
            window_keys=await count_window_keys(client, keys, partitions),
            stats=await stats_totals(client, keys, partitions))
    finally:
        stop_processes(processes)
        await client.close()
