"""Recovery duties of the runtime: a dead or stalled member's partitions taken over when its
lease runs out (and a stalled one fenced when it wakes), and trimming only what every group is
done with."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import redis

from agents.pipeline import DETECTOR
from pipeline.client.connection import open_fast_client
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.runtime.agent import StreamAgent
from pipeline.runtime.leases import Assignment
from tests.accounting import check_exactly_once
from tests.helpers import run_burst, xadd_all
from tests.outputs import check_commit_logs, group_state, lease_owners, lease_ran_out, stage_drained
from tests.procs import freeze, spawn_agent, stop_all, thaw, uncommitted_owned, wait_until

# A lease no run of a test outlasts: a member that must hold its partitions through the test's next
# steps holds them for certain, and the test ends them itself (run_out) where they must be over.
LONG_LEASE_MS = 600_000


def clicks(n: int, first: int = 0) -> list[list[str]]:
    return [["device_id", f"dev-{i}", "ip", "192.0.2.1"] for i in range(first, first + n)]


def sync_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, decode_responses=True)


def run_out(settings: Settings, units: list[int]) -> None:
    """End the detector leases on these partitions as running out does: owner and epoch kept, `until`
    in the past (the lease script takes a lease whose `until` is not ahead of the server's clock)."""
    with sync_client(settings) as client:
        for unit in units:
            client.hset(DETECTOR.lease_key(Keys(settings.namespace), unit), "until", 0)


async def test_dead_members_partitions_are_taken_over_when_its_leases_run_out(settings: Settings) -> None:
    ids = xadd_all(settings, clicks(50))
    await run_burst(settings, "router")
    # "dead-one" takes its leases (every partition: it is alone) and then never heartbeats again.
    # Leases that outlast the first burst however slow the machine; the test ends them itself.
    client = await open_fast_client(settings)
    try:
        dead = Assignment(client, DETECTOR, Keys(settings.namespace), replace(settings, lease_ms=LONG_LEASE_MS),
                          "dead-one")
        assert sorted((await dead.heartbeat()).gained) == DETECTOR.units(settings)
    finally:
        await client.close()

    alive = await run_burst(settings, "detector", consumer="alive")
    assert alive.processed == 0, "partitions were taken while their leases held"
    run_out(settings, DETECTOR.units(settings))
    assert all(lease_ran_out(settings, "detector", u) for u in DETECTOR.units(settings))
    await run_burst(settings, "detector", consumer="alive")
    out = check_exactly_once(settings, aggregated=False)
    assert sorted(out.verdicts) == sorted(i.encode() for i in ids)
    with redis.Redis.from_url(settings.redis_url) as sync:
        assert set(lease_owners(sync, settings, "detector").values()) == {""}, "a burst left leases held"
        check_commit_logs(sync, settings)


def test_stalled_owner_is_taken_over_and_fenced_when_it_wakes(settings: Settings, tmp_path: Path) -> None:
    """A detector frozen (SIGSTOP) while it owns partitions with uncommitted entries: another takes
    them over when its leases run out and judges them; thawed, the stalled one applies nothing
    twice, and the partitions are shared again."""
    log = tmp_path / "agents.log"
    stalled = spawn_agent(settings.redis_url, "detector", "stalled", log=log)
    processes = [stalled]
    units = DETECTOR.units(settings)
    try:
        with redis.Redis.from_url(settings.redis_url) as client:
            wait_until(lambda: set(lease_owners(client, settings, "detector").values()) == {"stalled"}, 30,
                       "the first detector to own every partition")
            freeze(stalled)
            first = xadd_all(settings, clicks(400))
            asyncio.run(run_burst(settings, "router"))
            assert uncommitted_owned(client, settings, "detector", "stalled") == 400
            taker = spawn_agent(settings.redis_url, "detector", "taker", log=log)
            processes.append(taker)
            wait_until(lambda: stage_drained(client, settings, "detector"), 30,
                       "the taker to judge the stalled one's clicks")
            assert set(lease_owners(client, settings, "detector").values()) == {"taker"}
            thaw(stalled)
            wait_until(lambda: sorted(lease_owners(client, settings, "detector").values()).count("stalled")
                       == len(units) // 2, 30, "the thawed detector to get its share back")
            second = xadd_all(settings, clicks(400, first=400))
            asyncio.run(run_burst(settings, "router"))
            wait_until(lambda: stage_drained(client, settings, "detector"), 30, "both detectors to judge the rest")
            assert stalled.poll() is None and taker.poll() is None, "a detector exited"
            check_commit_logs(client, settings)
    finally:
        stop_all(processes)
    out = check_exactly_once(settings, aggregated=False)
    assert sorted(out.verdicts) == sorted(i.encode() for i in first + second)


async def test_trim_keeps_everything_a_group_still_needs(settings: Settings) -> None:
    settings = replace(settings, partitions=1)
    stream = Keys(settings.namespace).partition(0).input
    ids = xadd_all(settings, clicks(1000))
    await run_burst(settings, "router")
    with sync_client(settings) as client:
        # Two more groups on the partition: one has committed up to 499, one up to 299.
        client.xgroup_create(stream, "laggard", ids[499])
        client.xgroup_create(stream, "behind", ids[299])
    await run_burst(settings, "detector", consumer="janitor")
    # A detector that is connected and prepared but not running, to call maintain() on: it trims
    # the partitions it reads.
    janitor = StreamAgent(DETECTOR, settings, consumer="janitor")
    janitor.client = await open_fast_client(settings)
    try:
        await janitor.prepare()
        janitor.cursors = {0: ids[-1].encode()}
        await check_trimming(settings, janitor, stream, ids)
    finally:
        await janitor.client.close()


async def check_trimming(settings: Settings, janitor: StreamAgent, stream: str, ids: list[str]) -> None:

    await janitor.maintain()  # default stream_keep_ms: nothing is old enough yet
    with sync_client(settings) as client:
        assert client.xlen(stream) == 1000

    janitor.settings = replace(janitor.settings, stream_keep_ms=0)
    await janitor.maintain()
    with sync_client(settings) as client:
        left = [entry_id for entry_id, _ in client.xrange(stream)]
        assert left == ids[len(ids) - len(left):], "trimming left a hole"
        assert set(ids[300:]) <= set(left), "an entry the 'behind' group has not committed was trimmed"
        assert len(left) < 1000, "nothing was trimmed although every group had committed old entries"
        client.xgroup_setid(stream, "behind", ids[-1])
    await janitor.maintain()
    with sync_client(settings) as client:
        left = [entry_id for entry_id, _ in client.xrange(stream)]
        assert set(ids[500:]) <= set(left), "an entry the 'laggard' group has not committed was trimmed"
        assert len(left) <= 600


async def test_a_burst_leaves_no_partition_nobody_holds_unread(settings: Settings) -> None:
    """A member that joined and holds one lease (starting, or dead within its lease): a burst run
    meanwhile must still read every partition nobody holds, not end at its own fair share."""
    ids = xadd_all(settings, clicks(200))
    await run_burst(settings, "router")
    client = await open_fast_client(settings)
    try:
        # Held through the burst however slow the machine (a lease running out mid-burst would be taken).
        holder = Assignment(client, DETECTOR, Keys(settings.namespace), replace(settings, lease_ms=LONG_LEASE_MS),
                            "holder")
        await holder.members()
        assert await holder._lease("acquire", 0)
    finally:
        await client.close()
    await run_burst(settings, "detector", consumer="burst")
    with redis.Redis.from_url(settings.redis_url) as sync:
        held = lease_owners(sync, settings, "detector")
        keys = Keys(settings.namespace)
        unread = [u for u in DETECTOR.units(settings) if held.get(u) != "holder"
                  and group_state(sync, keys.partition(u).input, DETECTOR.name) != (0, 0)]
    assert held[0] == "holder"
    assert unread == [], f"partitions nobody holds were left unread: {unread} ({len(ids)} clicks)"
