"""The attempt at a batch (attempts.py) costs no call of its own behind a committed batch: the step
that committed it counted the next one. A member makes one ``fraud_attempt`` per partition it takes,
then one step per batch and nothing more. Calls are counted by function on the server's own slow log
(every command logged, with its arguments), since ``INFO commandstats`` has one count for every FCALL."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
import redis

from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from tests.helpers import run_burst, xadd_all

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
