"""Redis SIGKILLed mid-flow and started again: the agents reconnect by themselves, and every click
whose XADD Redis acknowledged has exactly one outcome (``appendfsync always``)."""

from __future__ import annotations

from pathlib import Path

import redis

from pipeline.core.settings import Settings
from pipeline.dev.server import EmbeddedRedis
from tests.accounting import check_exactly_once
from tests.outputs import lease_owners, pipeline_drained
from tests.procs import spawn_agent, stop_all, wait_until
from tests.producer import Producer, check_each_click_judged_once

CLICKS = 30_000


def test_agents_ride_out_a_redis_crash(fresh_server: EmbeddedRedis, tmp_path: Path) -> None:
    url = fresh_server.url
    settings = Settings(redis_url=url, home=tmp_path)
    agents = [spawn_agent(url, stage, f"{stage}-1", log=tmp_path / "agents.log")
              for stage in ("router", "detector", "aggregator")]
    # Open-ended until after the restart: it is still sending when Redis dies, for certain, however
    # late the test gets to the kill (a fixed count could all be sent by then).
    producer = Producer(url, None)
    try:
        with redis.Redis.from_url(url) as client:
            wait_until(lambda: all(all(lease_owners(client, settings, stage).values())
                                   for stage in ("router", "detector", "aggregator")), 30, "every partition's owner")
        producer.start()
        wait_until(lambda: len(producer.acknowledged) >= CLICKS // 3, 60, "a third of the clicks")
        fresh_server.kill()
        # Restart only once both sides have met the dead server, so the test is certain to test that.
        wait_until(lambda: producer.retried_batches > 0, 30, "the producer to see the crash")
        wait_until(lambda: (tmp_path / "agents.log").read_text().count("redis unavailable, retrying") >= 3, 30,
                   "the agents to see the crash")
        fresh_server.start()
        more = len(producer.acknowledged) + CLICKS - CLICKS // 3
        wait_until(lambda: len(producer.acknowledged) >= more, 120, "two thirds of the clicks more after the restart")
        producer.finish()
        producer.join(60)
        assert not producer.is_alive()
        assert producer.retried_batches > 0, "the producer never saw the crash: nothing was tested"
        with redis.Redis.from_url(url) as client:
            wait_until(lambda: pipeline_drained(client, settings), 90, "the pipeline to drain after the restart")
        assert all(agent.poll() is None for agent in agents), "an agent gave up instead of reconnecting"
    finally:
        producer.finish()
        stop_all(agents)
    assert "redis unavailable, retrying" in (tmp_path / "agents.log").read_text()

    out = check_exactly_once(settings)
    assert len(producer.acknowledged) >= CLICKS
    check_each_click_judged_once(out, producer)
