"""Recovery duties of the runtime: reclaiming a dead consumer's entries, capping deliveries,
forgetting idle consumers, and trimming only what every group is done with."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import redis

from agents.pipeline import DETECTOR
from pipeline.client.connection import open_fast_client
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.runtime.agent import StreamAgent
from tests.accounting import check_exactly_once
from tests.helpers import run_burst, xadd_all
from tests.procs import wait_consumers_idle, wait_pending_idle

RAW = Keys().raw


def clicks(n: int) -> list[list[str]]:
    return [["device_id", f"dev-{i}", "ip", "192.0.2.1"] for i in range(n)]


def sync_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, decode_responses=True)


def create_group(settings: Settings, group: str = DETECTOR.name) -> None:
    with sync_client(settings) as client:
        client.xgroup_create(RAW, group, "0", mkstream=True)


def read_as(settings: Settings, consumer: str, count: int, group: str = DETECTOR.name) -> list[str]:
    with sync_client(settings) as client:
        reply = client.xreadgroup(group, consumer, {RAW: ">"}, count=count)
    return [entry_id for entry_id, _ in reply[0][1]] if reply else []


@pytest.fixture
async def janitor(settings: Settings) -> AsyncIterator[StreamAgent]:
    """A detector agent that is connected and prepared but not running, to call maintain() on."""
    agent = StreamAgent(DETECTOR, settings, consumer="janitor")
    agent.client = await open_fast_client(settings)
    try:
        await agent.prepare()
        yield agent
    finally:
        await agent.client.close()


async def test_dead_consumers_entries_are_taken_over_after_min_idle(settings: Settings) -> None:
    settings = replace(settings, claim_min_idle_ms=500)
    ids = xadd_all(settings, clicks(50))
    create_group(settings)
    held = read_as(settings, "dead-one", 20)
    assert held == ids[:20]

    await run_burst(settings, "detector", consumer="alive")
    with sync_client(settings) as client:
        pending = client.xpending_range(RAW, DETECTOR.name, "-", "+", 100)
    assert [p["message_id"] for p in pending] == held, "entries were taken before the min idle time"
    assert {p["consumer"] for p in pending} == {"dead-one"}

    with sync_client(settings) as client:
        wait_pending_idle(client, RAW, DETECTOR.name, settings.claim_min_idle_ms)
    await run_burst(settings, "detector", consumer="alive")
    out = check_exactly_once(settings, aggregated=False)
    assert sorted(out.verdicts) == sorted(i.encode() for i in ids)
    with sync_client(settings) as client:
        assert client.xpending_range(RAW, DETECTOR.name, "-", "+", 100, consumername="dead-one") == []


async def test_entry_delivered_too_often_is_dead_lettered_with_its_count(settings: Settings) -> None:
    settings = replace(settings, claim_min_idle_ms=100, max_deliveries=3)
    ids = xadd_all(settings, clicks(6))
    create_group(settings)
    read_as(settings, "looping", 6)
    with sync_client(settings) as client:
        # Entry 0 came back to its own consumer (restarts), entry 1 went round several consumers;
        # the others were delivered once or twice and are fine.
        for _ in range(4):
            client.xclaim(RAW, DETECTOR.name, "looping", 0, [ids[0]])
            client.xclaim(RAW, DETECTOR.name, "crashed", 0, [ids[1]])
        client.xclaim(RAW, DETECTOR.name, "looping", 0, [ids[2]])
        wait_pending_idle(client, RAW, DETECTOR.name, settings.claim_min_idle_ms)
    # "looping" restarts: it re-reads its own pending entries, then reclaims "crashed"'s.
    await run_burst(settings, "detector", consumer="looping")

    out = check_exactly_once(settings, aggregated=False)
    assert set(out.dead) == {ids[0].encode(), ids[1].encode()}
    for raw_id in (ids[0], ids[1]):
        letter = out.dead[raw_id.encode()]
        assert letter[b"reason"].startswith(b"max_deliveries:")
        assert int(letter[b"deliveries"]) > 3
        assert letter[b"device_id"] == f"dev-{ids.index(raw_id)}".encode(), "the original fields are kept"
    assert sorted(out.verdicts) == sorted(i.encode() for i in ids[2:])


async def test_idle_consumers_go_only_when_they_hold_nothing(settings: Settings, janitor: StreamAgent) -> None:
    xadd_all(settings, clicks(3))
    with sync_client(settings) as client:
        client.xgroup_createconsumer(RAW, DETECTOR.name, "idle-empty")
    read_as(settings, "idle-holding", 1)
    janitor.settings = replace(janitor.settings, consumer_idle_delete_ms=1000, claim_min_idle_ms=3_600_000)
    with sync_client(settings) as client:
        # Strictly more idle than the limit (maintenance removes those idle longer than it).
        wait_consumers_idle(client, RAW, DETECTOR.name, {"idle-empty", "idle-holding"}, 1001)
        client.xgroup_createconsumer(RAW, DETECTOR.name, "just-joined")
    await janitor.maintain()
    with sync_client(settings) as client:
        consumers = {c["name"]: c for c in client.xinfo_consumers(RAW, DETECTOR.name)}
    assert "idle-empty" not in consumers
    assert "just-joined" in consumers, "a consumer idle less than the limit was removed"
    assert consumers["idle-holding"]["pending"] == 1, "a consumer holding entries was removed"


async def test_trim_keeps_everything_a_group_still_needs(settings: Settings, janitor: StreamAgent) -> None:
    ids = xadd_all(settings, clicks(1000))
    create_group(settings, "laggard")
    create_group(settings, "behind")
    with sync_client(settings) as client:
        laggard = read_as(settings, "l", 520, "laggard")
        client.xack(RAW, "laggard", *laggard[:500])  # 500..519 pending, 520.. undelivered
        behind = read_as(settings, "b", 300, "behind")
        client.xack(RAW, "behind", *behind)  # everything acked, but 300.. undelivered
    await run_burst(settings, "detector", consumer="janitor")

    await janitor.maintain()  # default stream_keep_ms: nothing is old enough yet
    with sync_client(settings) as client:
        assert client.xlen(RAW) == 1000

    janitor.settings = replace(janitor.settings, stream_keep_ms=0)
    await janitor.maintain()
    with sync_client(settings) as client:
        left = [entry_id for entry_id, _ in client.xrange(RAW)]
        assert left == ids[len(ids) - len(left):], "trimming left a hole"
        assert set(ids[300:]) <= set(left), "an entry the 'behind' group has not read was trimmed"
        assert len(left) < 1000, "nothing was trimmed although every group had acknowledged old entries"
        client.xack(RAW, "behind", *read_as(settings, "b", 1000, "behind"))
    await janitor.maintain()
    with sync_client(settings) as client:
        left = [entry_id for entry_id, _ in client.xrange(RAW)]
        assert set(ids[500:]) <= set(left), "an entry pending for 'laggard' was trimmed"
        assert len(left) <= 600
        pending = client.xpending_range(RAW, "laggard", "-", "+", 100)
        assert [p["message_id"] for p in pending] == ids[500:520]
