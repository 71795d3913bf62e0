"""A server that cannot serve for a moment is waited out, never mistaken for a poison entry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import redis

from agents.detector import Detector
from agents.pipeline import DETECTOR
from pipeline.client.resp import RespError
from pipeline.core.errors import FraudError
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.dev.server import EmbeddedRedis
from pipeline.runtime.agent import StreamAgent
from pipeline.runtime.stage import BatchContext, Entry
from pipeline.runtime.worker import run_agent
from tests.accounting import check_exactly_once
from tests.helpers import run_burst, xadd_all
from tests.outputs import read_partitions, stage_drained

BALLAST = "ballast"


def oom_refusals(client: redis.Redis) -> int:
    return int(client.info("errorstats").get("errorstat_OOM", {}).get("count", 0))


async def test_a_server_out_of_memory_is_waited_out_never_dead_lettered(fresh_server: EmbeddedRedis,
                                                                        tmp_path: Path) -> None:
    settings = Settings(redis_url=fresh_server.url, home=tmp_path)
    ids = xadd_all(settings, [["device_id", f"d{i}", "ip", "192.0.2.1"] for i in range(50)])
    await run_burst(settings, "router")
    with redis.Redis.from_url(settings.redis_url) as client:
        agent = StreamAgent(DETECTOR, settings, burst=True, consumer="c")
        read = agent.read
        filled: list[int] = []

        async def read_then_fill_memory(block: bool) -> dict[int, list[Entry]]:
            # Memory runs out between the read of a batch and its step, for certain: the real
            # thing, filled past maxmemory (noeviction), so the server refuses every write step.
            entries = await read(block)
            if entries and not filled:
                client.setrange(BALLAST, 8 << 20, "x")
                client.config_set("maxmemory-policy", "noeviction")
                client.config_set("maxmemory", int(client.info("memory")["used_memory"]) - (4 << 20))
                with pytest.raises(redis.exceptions.OutOfMemoryError):
                    client.xadd("probe", {"f": "v"})
                filled.append(oom_refusals(client))
            return entries

        agent.read = read_then_fill_memory  # type: ignore[method-assign]
        await agent.start()
        try:
            # The agent keeps trying, and keeps being refused, while memory stays full.
            await wait_async(lambda: bool(filled) and oom_refusals(client) >= filled[0] + 3, 30,
                             "three OOM refusals of the agent's steps")
            assert not agent.loop_done.is_set()
            assert not read_partitions(client, settings, "dead") and not read_partitions(client, settings, "verdicts")
            client.delete(BALLAST)
            await asyncio.wait_for(agent.loop_done.wait(), 60)
        finally:
            await agent.stop()
    assert agent.error is None
    outcomes = check_exactly_once(settings, aggregated=False)
    assert set(outcomes.verdicts) == {i.encode() for i in ids} and not outcomes.dead


async def wait_async(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """wait_until for a test whose agent runs in the same event loop: it yields while it waits."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


class Broken(Detector):
    async def handle(self, ctx: BatchContext, entries: Sequence[Entry]) -> list[bytes]:
        raise RespError("ERR Error running script: attempt to compare nil with number")


async def test_a_step_that_fails_for_its_input_dead_letters_it(settings: Settings) -> None:
    # The counterpart: an error about the command itself is the entry's, so it is dead-lettered.
    ids = xadd_all(settings, [["device_id", "d", "ip", "192.0.2.1"]])
    await run_burst(settings, "router")
    agent = StreamAgent(DETECTOR, settings, handler=Broken(settings), burst=True, consumer="c")
    await agent.start()
    await agent.loop_done.wait()
    await agent.stop()
    with redis.Redis.from_url(settings.redis_url) as client:
        (_, flat), = read_partitions(client, settings, "dead")
        assert stage_drained(client, settings, DETECTOR.name), "the partition did not go on past it"
    fields = dict(zip(flat[:6:2], flat[1:6:2], strict=True))
    assert fields[b"raw_id"] == ids[0].encode()
    assert fields[b"reason"].startswith(b"error: RespError: ERR Error running script")


async def test_dead_letters_are_kept_for_dead_keep_ms_then_trimmed(settings: Settings) -> None:
    keys = Keys(settings.namespace).partition(0)
    with redis.Redis.from_url(settings.redis_url) as client:
        for second in (1, 2, 3):
            client.xadd(keys.dead, {"reason": "old"}, id=f"{second * 1000}-0")
        recent = client.xadd(keys.dead, {"reason": "recent"})
    agent = StreamAgent(DETECTOR, settings, burst=True, consumer="c")
    await agent.start()
    await agent.loop_done.wait()
    await agent.stop()
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        assert [entry_id for entry_id, _ in client.xrange(keys.dead)] == [recent.decode()]


async def test_a_bug_outside_any_batch_fails_the_agent_instead_of_a_quiet_exit(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = StreamAgent(DETECTOR, settings, burst=False, consumer="c")

    async def broken_maintenance() -> int:
        raise KeyError("a bug")

    monkeypatch.setattr(agent, "maintain", broken_maintenance)
    with pytest.raises(FraudError, match="detector agent failed: KeyError"):
        await run_agent(agent)
