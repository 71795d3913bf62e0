"""A server that cannot serve for a moment is waited out, never mistaken for a poison entry."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import redis

from agents.detector import Detector
from pipeline.errors import FraudError
from pipeline.keys import Keys
from pipeline.resp import RespError
from pipeline.runtime import BatchContext, Entry, StreamAgent
from pipeline.settings import Settings
from pipeline.worker import run_agent
from tests.helpers import verdicts_by_raw_id, xadd_all


class RefusedTwice(Detector):
    """A detector whose first two steps meet a server out of memory."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.refusals = 0

    async def handle(self, ctx: BatchContext, entries: Sequence[Entry]) -> list[bytes]:
        if self.refusals < 2:
            self.refusals += 1
            raise RespError("OOM command not allowed when used memory > 'maxmemory'.")
        return await super().handle(ctx, entries)


async def test_out_of_memory_is_retried_not_dead_lettered(settings: Settings) -> None:
    ids = xadd_all(settings, [["device_id", f"d{i}", "ip", "192.0.2.1"] for i in range(20)])
    handler = RefusedTwice(settings)
    agent = StreamAgent(handler, settings, burst=True, consumer="c")
    await agent.start()
    await agent.loop_done.wait()
    await agent.stop()
    assert handler.refusals == 2
    with redis.Redis.from_url(settings.redis_url) as client:
        assert client.xlen(Keys(settings.namespace).dead) == 0
    assert set(verdicts_by_raw_id(settings)) == set(ids)


class Broken(Detector):
    async def handle(self, ctx: BatchContext, entries: Sequence[Entry]) -> list[bytes]:
        raise RespError("ERR Error running script: attempt to compare nil with number")


async def test_a_step_that_fails_for_its_input_dead_letters_it(settings: Settings) -> None:
    # The counterpart: an error about the command itself is the entry's, so it is dead-lettered.
    ids = xadd_all(settings, [["device_id", "d", "ip", "192.0.2.1"]])
    agent = StreamAgent(Broken(settings), settings, burst=True, consumer="c")
    await agent.start()
    await agent.loop_done.wait()
    await agent.stop()
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        (_, fields), = client.xrange(Keys(settings.namespace).dead)
    assert fields["raw_id"] == ids[0]
    assert fields["reason"].startswith("error: RespError: ERR Error running script")


async def test_dead_letters_are_kept_for_dead_keep_ms_then_trimmed(settings: Settings) -> None:
    keys = Keys(settings.namespace)
    with redis.Redis.from_url(settings.redis_url) as client:
        for second in (1, 2, 3):
            client.xadd(keys.dead, {"reason": "old"}, id=f"{second * 1000}-0")
        recent = client.xadd(keys.dead, {"reason": "recent"})
    agent = StreamAgent(Detector(settings), settings, burst=True, consumer="c")
    await agent.start()
    await agent.loop_done.wait()
    await agent.stop()
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        assert [entry_id for entry_id, _ in client.xrange(keys.dead)] == [recent.decode()]


async def test_a_bug_outside_any_batch_fails_the_agent_instead_of_a_quiet_exit(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = StreamAgent(Detector(settings), settings, burst=False, consumer="c")

    async def broken_maintenance() -> int:
        raise KeyError("a bug")

    monkeypatch.setattr(agent, "maintain", broken_maintenance)
    with pytest.raises(FraudError, match="detector agent failed: KeyError"):
        await run_agent(agent)
