"""FRAUD_DETECTOR_LINGER_MS, FRAUD_AGGREGATOR_LINGER_MS: a stage woken by a read of a few entries
lets more gather before it reads again from the same offsets, so that they go in the same batch;
never when its batch was full, in burst mode, or with its linger 0. The waits are recorded, not
slept, and what "arrives" during one is added by the test: nothing rests on timing.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import redis

import pipeline.runtime.agent as agent_module
from agents.pipeline import AGGREGATOR, DETECTOR
from pipeline.client.connection import open_fast_client
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.runtime.agent import StreamAgent
from pipeline.runtime.leases import Assignment
from pipeline.runtime.stage import Stage
from tests.helpers import run_burst, xadd_all

LINGER_MS = 300


def clicks(n: int, start: int = 0) -> list[list[str]]:
    return [["device_id", f"dev-{i}", "ip", "192.0.2.1", "transaction_id", f"tx-{i}"] for i in range(start, start + n)]


class Waits:
    """Stands in for the agent's waits: records each one, and runs what the test says arrives
    during it (the stop event is never set, so nothing is slept)."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self.arriving: list[Callable[[], Awaitable[None]]] = []

    async def __call__(self, stop: object, seconds: float) -> bool:
        self.asked.append(seconds)
        if self.arriving:
            await self.arriving.pop(0)()
        return False


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> Waits:
    recorder = Waits()
    monkeypatch.setattr(agent_module, "wait_or_stop", recorder)
    return recorder


@asynccontextmanager
async def member(settings: Settings, stage: Stage, burst: bool = False) -> AsyncIterator[StreamAgent]:
    """A member holding the one partition, driven poll by poll by the test (its heartbeat not due)."""
    client = await open_fast_client(settings)
    agent = StreamAgent(stage, settings, consumer="m", burst=burst)
    agent.client = client
    try:
        await agent.prepare()
        agent.assignment = Assignment(client, stage, agent.keys, settings, "m")
        await agent.rebalance()
        agent._next_heartbeat = agent._next_maintenance = time.monotonic() + 60
        yield agent
    finally:
        await client.close()


def batches_committed(settings: Settings) -> int:
    """How many batches the aggregator committed in the one partition (its commit log)."""
    with redis.Redis.from_url(settings.redis_url) as client:
        return int(client.xlen(Keys(settings.namespace).partition(0).commits(AGGREGATOR.name)))


async def judged(settings: Settings, n: int, start: int) -> None:
    """n more verdicts in the partition."""
    xadd_all(settings, clicks(n, start))
    await run_burst(settings, "router")
    await run_burst(settings, "detector")


async def test_the_aggregator_lingers_when_woken_by_a_few_and_takes_what_came_meanwhile(
        settings: Settings, waits: Waits) -> None:
    settings = replace(settings, partitions=1, batch_size=5, aggregator_linger_ms=LINGER_MS)
    await judged(settings, 2, 0)
    async with member(settings, AGGREGATOR) as agent:
        waits.arriving.append(lambda: judged(settings, 2, 2))
        await agent.poll_once()  # woken by 2 of 5: lingers, and the 2 judged meanwhile join the batch
        assert waits.asked == [pytest.approx(LINGER_MS / 1000)]
        assert (agent.processed, batches_committed(settings)) == (4, 1)
        await judged(settings, 7, 4)
        await agent.poll_once()  # a full batch: read on at once
        assert (agent.processed, len(waits.asked)) == (9, 1)
        await agent.poll_once()  # the 2 left, read ahead behind the full batch: no linger either
        assert (agent.processed, len(waits.asked)) == (11, 1)
        await judged(settings, 1, 11)
        await agent.poll_once()  # woken by 1 of 5 again: lingers
        assert (agent.processed, len(waits.asked)) == (12, 2)


async def test_each_stage_lingers_by_its_own_setting_and_never_in_burst_mode(settings: Settings,
                                                                              waits: Waits) -> None:
    settings = replace(settings, partitions=1, batch_size=5, detector_linger_ms=0, aggregator_linger_ms=LINGER_MS)
    xadd_all(settings, clicks(2))
    await run_burst(settings, "router")
    async with member(settings, DETECTOR) as agent:
        await agent.poll_once()
        assert (agent.processed, waits.asked) == (2, [])
    async with member(replace(settings, detector_linger_ms=3), DETECTOR) as agent:
        xadd_all(settings, clicks(2, 2))
        await run_burst(settings, "router")
        await agent.poll_once()
        assert (agent.processed, waits.asked) == (2, [pytest.approx(0.003)])
    async with member(settings, AGGREGATOR, burst=True) as agent:
        await agent.poll_once()
        assert (agent.processed, len(waits.asked)) == (4, 1)


def test_the_linger_stays_below_the_heartbeat() -> None:
    for name in ("detector_linger_ms", "aggregator_linger_ms"):
        with pytest.raises(ValueError, match=f"FRAUD_{name.upper()}"):
            Settings(lease_ms=3_000, **{name: 1_000}).validate()
