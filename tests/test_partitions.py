"""Partitions end to end, with agents as separate processes: the same outcomes as the sequential
model for any number of detectors, members joining and leaving mid-flow, fencing on record, and
the time a dead member's partitions take to move."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from agents.generator import blacklisted_ips
from pipeline.core.keys import Keys
from pipeline.core.partitions import partition_of
from pipeline.core.settings import Settings
from tests.helpers import list_ips, run_pipeline, xadd_all
from tests.outputs import check_commit_logs, lease_owners, pipeline_drained, read_partitions
from tests.partition_audit import check_against_model, labelled_trace
from tests.procs import FAST_RECOVERY, kill_and_settle, spawn_agent, stop_all, wait_until

CLICKS = 12_000
LEASE_MS = int(FAST_RECOVERY["FRAUD_LEASE_MS"])


class Agents:
    """The agents a test started (as `fraud agent <stage>` processes), stopped by pid at the end."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings = settings
        self.log = log
        self.started: list[subprocess.Popen[bytes]] = []
        self.by_name: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, stage: str, name: str) -> subprocess.Popen[bytes]:
        process = spawn_agent(self.settings.redis_url, stage, name, log=self.log)
        self.started.append(process)
        self.by_name[name] = process
        return process

    def stop_all(self) -> None:
        stop_all(self.started)


def owners(client: redis.Redis, settings: Settings, stage: str = "detector") -> set[str]:
    return set(lease_owners(client, settings, stage).values())


def drain(client: redis.Redis, settings: Settings) -> None:
    wait_until(lambda: pipeline_drained(client, settings), 120, "every stage to commit all its input")


@pytest.mark.parametrize("detectors", [1, 2, 4])
def test_outcomes_match_the_model_for_any_number_of_detectors(settings: Settings, tmp_path: Path,
                                                              detectors: int) -> None:
    """A seeded labelled trace sent at once (a backlog: every batch holds several clicks of a device):
    every outcome is the sequential model's, whatever the number of detectors."""
    asyncio.run(list_ips(settings, blacklisted_ips()))
    agents = Agents(settings, tmp_path / "agents.log")
    try:
        agents.start("router", "router-1")
        for n in range(detectors):
            agents.start("detector", f"detector-{n}")
        agents.start("aggregator", "aggregator-1")
        with redis.Redis.from_url(settings.redis_url) as client:
            # Every detector holds its share before the clicks come, so that all of them judge some.
            wait_until(lambda: len(owners(client, settings) - {""}) == detectors, 30,
                       f"the partitions to be shared by {detectors} detectors")
            xadd_all(settings, labelled_trace(seed=detectors, count=CLICKS))
            drain(client, settings)
            assert check_commit_logs(client, settings) > 0
    finally:
        agents.stop_all()
    check_against_model(settings)


def test_members_joining_and_leaving_mid_flow_change_no_outcome(settings: Settings, tmp_path: Path) -> None:
    """Detectors join while a backlog is judged and one leaves (SIGTERM) in the middle: partitions
    move between members, and every outcome is still the model's, every batch applied once."""
    asyncio.run(list_ips(settings, blacklisted_ips()))
    agents = Agents(settings, tmp_path / "agents.log")
    trace = labelled_trace(seed=7, count=3 * CLICKS // 2)
    third = len(trace) // 3
    try:
        agents.start("router", "router-1")
        agents.start("detector", "detector-0")
        agents.start("aggregator", "aggregator-1")
        with redis.Redis.from_url(settings.redis_url) as client:
            wait_until(lambda: owners(client, settings) == {"detector-0"}, 30, "detector-0 to own every partition")
            xadd_all(settings, trace[:third])
            agents.start("detector", "detector-1")
            agents.start("detector", "detector-2")
            wait_until(lambda: owners(client, settings) == {"detector-0", "detector-1", "detector-2"}, 30,
                       "the partitions to be shared by the three detectors")
            xadd_all(settings, trace[third:2 * third])
            leaving = agents.by_name["detector-1"]
            leaving.send_signal(signal.SIGTERM)
            assert leaving.wait(30) == 0
            xadd_all(settings, trace[2 * third:])
            wait_until(lambda: owners(client, settings) == {"detector-0", "detector-2"}, 30,
                       "detector-1's partitions to move to the others")
            drain(client, settings)
            assert check_commit_logs(client, settings) > 0
    finally:
        agents.stop_all()
    check_against_model(settings)


def test_partitions_of_a_killed_member_move_within_the_lease(settings: Settings, tmp_path: Path) -> None:
    """SIGKILL one of two detectors: its partitions are the survivor's within a lease and a heartbeat
    (FRAUD_LEASE_MS, a heartbeat every third of it), measured from the kill."""
    agents = Agents(settings, tmp_path / "agents.log")
    try:
        agents.start("detector", "survivor")
        victim = agents.start("detector", "victim")
        with redis.Redis.from_url(settings.redis_url) as client:
            wait_until(lambda: owners(client, settings) == {"survivor", "victim"}, 30,
                       "the two detectors to share the partitions")
            killed_at = time.monotonic()
            kill_and_settle(client, victim)
            wait_until(lambda: owners(client, settings) == {"survivor"}, 30,
                       "the survivor to own every partition", interval=0.01)
            took = time.monotonic() - killed_at
    finally:
        agents.stop_all()
    bound = LEASE_MS * 4 / 3 / 1000
    print(f"rebalance after SIGKILL: {took:.2f} s (lease {LEASE_MS} ms, bound {bound:.2f} s)")
    # The bound plus the scheduling slack of a loaded 2-core machine (processes may wait for a core).
    assert took <= bound + 1.0, f"partitions moved after {took:.2f} s, the bound is {bound:.2f} s"


def test_a_click_written_into_another_partition_than_its_devices_is_a_dead_letter(settings: Settings) -> None:
    """A producer with a partition function of its own (a signed CRC, another P) would split a
    device over partitions: such a click is dead-lettered, never judged out of its device's order."""
    keys = Keys(settings.namespace)
    home = partition_of("dev-1", settings.partitions)
    wrong = (home + 1) % settings.partitions
    with redis.Redis.from_url(settings.redis_url) as client:
        client.xadd(keys.partition(home).input, {"device_id": "dev-1", "ip": "192.0.2.1"})
        client.xadd(keys.partition(wrong).input, {"device_id": "dev-1", "ip": "192.0.2.2"})
    asyncio.run(run_pipeline(settings))
    with redis.Redis.from_url(settings.redis_url) as client:
        verdicts = read_partitions(client, settings, "verdicts")
        dead = read_partitions(client, settings, "dead")
    assert len(verdicts) == 1
    (_, letter), = dead
    reason = dict(zip(letter[:6:2], letter[1:6:2], strict=True))[b"reason"].decode()
    assert reason == f"wrong_partition: device_id 'dev-1' belongs to partition {home} (crc32 % 8), not {wrong}"
