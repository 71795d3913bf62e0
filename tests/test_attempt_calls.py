"""The attempt at a batch (attempts.py) costs no call of its own behind a committed batch: the step
that committed it counted the next one. A member makes one ``fraud_attempt`` per partition it takes,
then one step per batch and nothing more; a group reset moving the offset back is counted afresh.
Calls are counted by function on the server's own slow log (every command logged, with its
arguments), since ``INFO commandstats`` has one count for every FCALL."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
import redis

from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.runtime.agent import StreamAgent
from tests.helpers import run_burst, verdicts_by_raw_id, xadd_all
from tests.test_exactly_once import clicks, member_a_holding_partition_0
from tests.test_group_reset import run

BATCH = 10
BATCHES = 12


@pytest.fixture
def function_calls(settings: Settings) -> Iterator[Callable[[], Counter[str]]]:
    """Counts FCALLs by function since the test began (the server's slow log, logging every command)."""
    with redis.Redis.from_url(settings.redis_url) as client:
        kept = client.config_get("slowlog-*")
        client.config_set("slowlog-max-len", 100_000)
        client.config_set("slowlog-log-slower-than", 0)
        client.slowlog_reset()

        def calls() -> Counter[str]:
            entries = client.execute_command("SLOWLOG", "GET", -1)
            assert len(entries) < 100_000, "the slow log overflowed"
            return Counter(argv[1].decode() for _, _, _, argv, *_ in entries if argv[0].upper() == b"FCALL")

        try:
            yield calls
        finally:
            for name, value in kept.items():
                client.config_set(name, value)


async def test_a_member_counts_attempts_with_its_steps(settings: Settings,
                                                      function_calls: Callable[[], Counter[str]]) -> None:
    settings = replace(settings, partitions=1, batch_size=BATCH)
    lease = Keys(settings.namespace).partition(0).lease("detector")
    clicks = [["device_id", f"dev-{i % 7}", "ip", "192.0.2.1", "transaction_id", f"tx-{i}"]
              for i in range(BATCH * BATCHES)]
    ids = xadd_all(settings, clicks)
    await run_burst(settings, "router")
    detector = await run_burst(settings, "detector")
    aggregator = await run_burst(settings, "aggregator")
    assert detector.processed == aggregator.processed == BATCH * BATCHES
    with redis.Redis.from_url(settings.redis_url) as client:
        # The last step counted the attempt at what follows it, as fraud_attempt would have.
        assert client.hmget(lease, "attempt_at", "attempts") == [ids[-1].encode(), b"1"]
        assert client.hget(lease, "suspects_to") is None
    calls = function_calls()
    assert (calls["fraud_detect"], calls["fraud_aggregate"]) == (BATCHES, BATCHES), calls
    # Without the steps counting them, a fraud_attempt before every step: 2 * BATCHES of them.
    assert calls["fraud_attempt"] == 2, f"one for each stage's partition taken, none per batch: {calls}"


async def poll_until_at(agent: StreamAgent, last: str) -> None:
    """Drive the member's polls (its heartbeat not due) until it has committed up to `last`."""
    for _ in range(10):
        agent._next_heartbeat = agent._next_maintenance = time.monotonic() + 60
        await agent.poll_once()
        if agent.cursors.get(0) == last.encode():
            return
    raise AssertionError(f"the member did not reach {last}: it stands at {agent.cursors}")


async def test_a_group_reset_back_is_counted_afresh(settings: Settings,
                                                    function_calls: Callable[[], Counter[str]]) -> None:
    """A member whose last step counted the attempt after its offset, then the group moved back under
    it (``fraud group reset --force``): its next step is fenced, it resumes at the reset offset with a
    ``fraud_attempt`` of its own there, and counts from its steps again once it is past it."""
    settings = replace(settings, partitions=1, batch_size=5)
    lease = Keys(settings.namespace).partition(0).lease("detector")
    async with member_a_holding_partition_0(settings) as (agent, ids):
        await poll_until_at(agent, ids[-1])
        assert function_calls()["fraud_attempt"] == 1
        assert await run(settings, "group", "reset", "--stage", "detector", "--to-id", ids[4],
                         "--execute", "--force") == 0
        more = xadd_all(settings, clicks(15)[10:])
        await run_burst(settings, "router")
        await poll_until_at(agent, more[-1])
        with redis.Redis.from_url(settings.redis_url) as client:
            assert client.hmget(lease, "attempt_at", "attempts") == [more[-1].encode(), b"1"]
    calls = function_calls()
    assert calls["fraud_attempt"] == 2, f"one when the partition was taken, one at the reset offset: {calls}"
    # Two batches, one fenced after the reset, the five entries after the reset offset again, the new ones.
    assert calls["fraud_detect"] == 5, calls
    # One verdict a click: the five judged again are duplicates (the stats say so, not the raw stream).
    assert sorted(verdicts_by_raw_id(settings)) == sorted(ids + more)
