"""In-process pipeline runs against a real server, for tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import redis

from agents.pipeline import PIPELINE
from agents.pipeline import stage as stage_named
from pipeline.client.connection import open_redis
from pipeline.core.keys import VERDICTS, Keys
from pipeline.core.partitions import partition_of
from pipeline.core.settings import Settings
from pipeline.ops.blacklist import add_ips
from pipeline.runtime.agent import StreamAgent
from pipeline.runtime.agent import run_burst as burst
from schemas.verdict import Verdict
from tests.outputs import open_client


def xadd_all(settings: Settings, clicks: Iterable[Sequence[str | bytes]]) -> list[str]:
    """XADD each click (a flat field/value list) to the raw stream; returns the entry ids."""
    keys = Keys(settings.namespace)
    with open_client(settings.redis_url) as client:
        pipe = client.pipeline(transaction=False)
        for click in clicks:
            pipe.execute_command("XADD", keys.raw, "*", *click)
        return [i.decode() for i in pipe.execute()]


async def run_burst(settings: Settings, stage: str, consumer: str = "test") -> StreamAgent:
    """Run one stage until its stream holds nothing more for it."""
    return await burst(stage_named(stage), settings, consumer)


async def run_pipeline(settings: Settings) -> None:
    """Every stage in flow order, each until its inputs hold nothing more for it."""
    for stage in PIPELINE:
        await run_burst(settings, stage.name)


def stream_entries(settings: Settings, stream: str) -> list[tuple[str, dict[str, str]]]:
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        return [(entry_id, fields) for entry_id, fields in client.xrange(stream)]


def verdicts_by_raw_id(settings: Settings) -> dict[str, str]:
    """raw id -> verdict; fails on a raw id with two verdicts, or an entry that is not a Verdict."""
    out: dict[str, str] = {}
    entries = [e for part in Keys(settings.namespace).partitions(settings.partitions)
               for e in stream_entries(settings, part.verdicts)]
    for _, fields in entries:
        verdict = Verdict.from_fields(fields)
        assert verdict.raw_id not in out, f"two verdicts for {verdict.raw_id}"
        assert verdict.verdict in VERDICTS, verdict
        out[verdict.raw_id] = verdict.verdict
    return out


def series_totals(settings: Settings) -> dict[str, int]:
    """Sum of every sample of each verdict's raw series (every partition's), over all time."""
    keys = Keys(settings.namespace)
    totals: dict[str, int] = dict.fromkeys(VERDICTS, 0)
    with open_client(settings.redis_url) as client:
        for part in keys.partitions(settings.partitions):
            for verdict in VERDICTS:
                if not client.exists(part.series(verdict)):
                    continue
                samples: list[Any] = client.execute_command("TS.RANGE", part.series(verdict), "-", "+")
                totals[verdict] += int(sum(float(value) for _, value in samples))
    return totals


async def list_ips(settings: Settings, ips: Iterable[str]) -> None:
    """List addresses the way `fraud blacklist add` does (every partition's filter and member set in step)."""
    client = await open_redis(settings)
    try:
        await add_ips(client, Keys(settings.namespace), settings, list(ips))
    finally:
        await client.aclose()


def one_device_per_partition(stem: str, partitions: int) -> list[str]:
    """A device name (stem + a number) for each partition, in partition order."""
    first: dict[int, str] = {}
    for n in range(1_000 * partitions):
        first.setdefault(partition_of(f"{stem}{n}", partitions), f"{stem}{n}")
    return [first[p] for p in range(partitions)]
