"""FRAUD_LINGER_MS: a stage whose output nobody waits on (the aggregator) lets entries gather
before it reads again while it keeps up, and never when it is behind, in burst mode, or for the
stages whose output is waited on. The waits are recorded, not timed, so the test cannot flake."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest

import pipeline.runtime.agent as agent_module
from agents.pipeline import AGGREGATOR, DETECTOR
from pipeline.client.connection import open_fast_client
from pipeline.core.settings import Settings
from pipeline.runtime.agent import StreamAgent
from pipeline.runtime.leases import Assignment
from pipeline.runtime.stage import Stage
from tests.helpers import run_burst, xadd_all

LINGER_MS = 300


def clicks(n: int, start: int = 0) -> list[list[str]]:
    return [["device_id", f"dev-{i}", "ip", "192.0.2.1", "transaction_id", f"tx-{i}"] for i in range(start, start + n)]


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every wait the agent asks for, in seconds (none is slept: the stop event is not set)."""
    asked: list[float] = []

    async def record(stop: object, seconds: float) -> bool:
        asked.append(seconds)
        return False

    monkeypatch.setattr(agent_module, "wait_or_stop", record)
    return asked


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


async def judged(settings: Settings, n: int, start: int) -> None:
    """n more verdicts in the partition."""
    xadd_all(settings, clicks(n, start))
    await run_burst(settings, "router")
    await run_burst(settings, "detector")


async def test_the_aggregator_lingers_while_it_keeps_up_and_not_when_behind(settings: Settings,
                                                                            waits: list[float]) -> None:
    settings = replace(settings, partitions=1, batch_size=5, linger_ms=LINGER_MS)
    await judged(settings, 3, 0)
    async with member(settings, AGGREGATOR) as agent:
        await agent.poll_once()  # the first read: nothing known yet, so no wait
        assert (agent.processed, waits) == (3, [])
        await judged(settings, 7, 3)
        await agent.poll_once()  # kept up (3 < 5): lingers, then reads a full batch
        assert agent.processed == 8
        assert waits == [pytest.approx(LINGER_MS / 1000)]
        await agent.poll_once()  # behind (the batch was full): reads the rest at once
        assert (agent.processed, len(waits)) == (10, 1)


async def test_no_linger_for_the_detector_nor_in_burst_mode(settings: Settings, waits: list[float]) -> None:
    settings = replace(settings, partitions=1, batch_size=5, linger_ms=LINGER_MS)
    xadd_all(settings, clicks(2))
    await run_burst(settings, "router")
    async with member(settings, DETECTOR) as agent:
        await agent.poll_once()
        xadd_all(settings, clicks(2, 2))
        await run_burst(settings, "router")
        await agent.poll_once()
        assert (agent.processed, waits) == (4, [])
    async with member(settings, AGGREGATOR, burst=True) as agent:
        await agent.poll_once()  # the detector's four verdicts: it kept up
        assert await agent.poll_once(), "a burst member's second read found nothing, at once"
        assert (agent.processed, waits) == (4, [])


def test_the_linger_stays_below_the_heartbeat() -> None:
    with pytest.raises(ValueError, match="FRAUD_LINGER_MS"):
        Settings(lease_ms=3_000, linger_ms=1_000).validate()
