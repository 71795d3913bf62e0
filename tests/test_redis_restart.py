"""Redis SIGKILLed mid-flow and started again: the agents reconnect by themselves, and every click
whose XADD Redis acknowledged has exactly one outcome (``appendfsync always``)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import redis

from pipeline.keys import AGGREGATOR_GROUP, DETECTOR_GROUP, Keys
from pipeline.server import EmbeddedRedis
from pipeline.settings import Settings
from tests.accounting import check_exactly_once
from tests.procs import group_state, pipeline_drained, spawn_agent, stop_all, wait_until

CLICKS = 30_000
BATCH = 500


class Producer(threading.Thread):
    """XADDs batches; a batch whose reply did not arrive is sent again (its outcome is unknown)."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.acknowledged: set[int] = set()
        self.retried_batches = 0

    def run(self) -> None:
        raw = Keys().raw
        client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=1)
        try:
            for first in range(0, CLICKS, BATCH):
                numbers = range(first, first + BATCH)
                while True:
                    try:
                        pipe = client.pipeline(transaction=False)
                        for i in numbers:
                            pipe.xadd(raw, {"device_id": f"dev-{i % 2000}", "ip": "192.0.2.1",
                                            "transaction_id": f"tx-{i}", "ts": str(1_000_000 + 37 * i)})
                        pipe.execute()
                        break
                    except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                        self.retried_batches += 1
                        time.sleep(0.2)
                self.acknowledged.update(numbers)
                time.sleep(0.01)
        finally:
            client.close()


def test_agents_ride_out_a_redis_crash(fresh_server: EmbeddedRedis, tmp_path: Path) -> None:
    url = fresh_server.url
    keys = Keys()
    agents = [spawn_agent(url, "detector", "d1", log=tmp_path / "agents.log"),
              spawn_agent(url, "aggregator", "a1", log=tmp_path / "agents.log")]
    producer = Producer(url)
    try:
        with redis.Redis.from_url(url) as client:
            wait_until(lambda: group_state(client, keys.raw, DETECTOR_GROUP) is not None
                       and group_state(client, keys.verdicts, AGGREGATOR_GROUP) is not None, 30, "the groups")
        producer.start()
        wait_until(lambda: len(producer.acknowledged) >= CLICKS // 3, 60, "a third of the clicks")
        fresh_server.kill()
        # Restart only once both sides have met the dead server, so the test is certain to test that.
        wait_until(lambda: producer.retried_batches > 0, 30, "the producer to see the crash")
        wait_until(lambda: (tmp_path / "agents.log").read_text().count("redis unavailable, retrying") >= 2, 30,
                   "the agents to see the crash")
        fresh_server.start()
        producer.join(120)
        assert not producer.is_alive()
        assert producer.retried_batches > 0, "the producer never saw the crash: nothing was tested"
        with redis.Redis.from_url(url) as client:
            wait_until(lambda: pipeline_drained(client, keys), 90, "the pipeline to drain after the restart")
        assert all(agent.poll() is None for agent in agents), "an agent gave up instead of reconnecting"
    finally:
        stop_all(agents)
    assert "redis unavailable, retrying" in (tmp_path / "agents.log").read_text()

    out = check_exactly_once(Settings(redis_url=url, home=tmp_path))
    assert producer.acknowledged == set(range(CLICKS))
    per_click = Counter(int(v[b"transaction_id"].removeprefix(b"tx-")) for v in out.verdicts.values())
    assert set(per_click) == set(range(CLICKS)), "an acknowledged click has no verdict"
    assert max(per_click.values()) == 1
    assert len(out.dead) == 0
    assert len(out.duplicates) == len(out.raw) - CLICKS  # retried batches whose first XADD had landed
