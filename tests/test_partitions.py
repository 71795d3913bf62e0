"""Partitions end to end, with agents as separate processes: the same outcomes as the sequential
model for any number of detectors, members joining and leaving mid-flow, fencing on record, and
the time a dead member's partitions take to move."""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
import redis
from redis.client import Monitor

from agents.generator import blacklisted_ips
from agents.pipeline import DETECTOR
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


class Takeover:
    """From a MONITOR log (commands of functions included, in the order the server ran them): the
    victim's last lease `until` on each partition and its last membership expiry (server clock, ms),
    the survivor's heartbeats (the `now` each started at), and where the survivor took each of the
    victim's partitions over."""

    def __init__(self, client: redis.Redis, settings: Settings, victim: str, survivor: str) -> None:
        keys = Keys(settings.namespace)
        self.members_key = keys.members(DETECTOR.name)
        self.units = {DETECTOR.lease_key(keys, u): u for u in DETECTOR.units(settings)}
        self.victim, self.survivor = victim, survivor
        # The state as read once the log had begun: later writes are all in the log (and replaying
        # one written before the read again is harmless: HSET and ZADD set absolute values).
        self.lease: dict[int, dict[str, str]] = {}
        for key, unit in self.units.items():
            self.lease[unit] = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
        self.membership = int(client.zscore(self.members_key, victim) or 0)
        self.ran_out: dict[int, int] = {}  # unit -> the victim's last `until` there
        self.epochs: dict[int, tuple[int, int]] = {}  # unit -> (victim's epoch, survivor's)
        self.joins_before: dict[int, list[int]] = {}  # unit -> survivor's heartbeats logged before taking it
        self.joins: list[int] = []
        self.taken_at: dict[int, float] = {}  # unit -> when the survivor took it (log time, ms)
        # What the victim held as the log began (the two had settled): all it can lose, even to a
        # takeover before the kill, should the machine hold its heartbeats back for a lease.
        self.victims = {u for u, held in self.lease.items() if held.get("owner") == victim}

    def replay(self, monitor: Monitor, end: str) -> None:
        """Read the log up to the ECHO of `end`."""
        now = 0
        while True:
            line = monitor.next_command()
            argv = line["command"].split(" ")
            if line["client_type"] != "lua":
                if argv == ["ECHO", end]:
                    return
                continue

            if argv[0] == "ZREMRANGEBYSCORE" and argv[1] == self.members_key:
                now = int(argv[3])  # fraud_member's `now`, just before it ZADDs the member
            elif argv[0] == "ZADD" and argv[1] == self.members_key:
                name = argv[3]
                if name == self.victim:
                    self.membership = int(argv[2])
                elif name == self.survivor:
                    self.joins.append(now)
            elif argv[0] == "HSET" and argv[1] in self.units:
                self._lease_written(self.units[argv[1]], dict(zip(argv[2::2], argv[3::2], strict=True)),
                                    line["time"] * 1000)

    def _lease_written(self, unit: int, fields: dict[str, str], at_ms: float) -> None:
        held = self.lease[unit]
        if fields.get("owner") == self.survivor and held.get("owner") == self.victim:
            self.ran_out[unit] = int(held["until"])
            self.epochs[unit] = (int(held["epoch"]), int(fields["epoch"]))
            self.joins_before[unit] = list(self.joins)
            self.taken_at[unit] = at_ms
        held.update(fields)


def test_partitions_of_a_killed_member_move_within_the_lease(settings: Settings, tmp_path: Path) -> None:
    """SIGKILL one of two detectors: its leases and membership run out within a lease of the kill,
    and the survivor takes each of its partitions at its first heartbeat after that (FRAUD_LEASE_MS,
    a heartbeat every third of it), all on the server's clock: how late the machine lets the survivor
    run moves its heartbeats, never what a heartbeat does."""
    agents = Agents(settings, tmp_path / "agents.log")
    try:
        agents.start("detector", "survivor")
        victim = agents.start("detector", "victim")
        with redis.Redis.from_url(settings.redis_url) as client, \
                redis.Redis.from_url(settings.redis_url, socket_timeout=60) as watcher:
            # Settled (each holds its fair share, so neither takes or releases any more): from here
            # on, every partition the survivor takes, it takes from the victim.
            wait_until(lambda: sorted(lease_owners(client, settings, "detector").values())
                       == ["survivor"] * 4 + ["victim"] * 4, 30, "the two detectors to hold four partitions each")
            with watcher.monitor() as monitor:
                takeover = Takeover(client, settings, "victim", "survivor")
                kill_and_settle(client, victim)
                seconds, micros = client.time()
                killed_ms = seconds * 1000 + micros // 1000  # the victim ran its last command before this
                wait_until(lambda: owners(client, settings) == {"survivor"}, 30,
                           "the survivor to own every partition")
                end = f"end-{uuid.uuid4()}"
                client.echo(end)
                takeover.replay(monitor, end)
    finally:
        agents.stop_all()
    assert takeover.victims, "the victim held nothing when it was killed: nothing was tested"
    assert set(takeover.ran_out) == takeover.victims, "partitions the survivor did not take from the victim"
    membership_ran_out = takeover.membership
    assert membership_ran_out <= killed_ms + LEASE_MS, "the victim's membership outlasted a lease after the kill"
    last_heartbeat = membership_ran_out - LEASE_MS
    took_ms = 0.0
    for unit, until in sorted(takeover.ran_out.items()):
        assert until <= killed_ms + LEASE_MS, f"partition {unit}: the victim's lease outlasted a lease after the kill"
        before, after = takeover.epochs[unit]
        assert after == before + 1, f"partition {unit}: taken at epoch {after} after the victim's {before}"
        assert takeover.taken_at[unit] >= until, f"partition {unit}: taken before the victim's lease ran out"
        # The survivor's first heartbeat that begins once both have run out takes the partition
        # (one that begins before may already take it): a second one beginning first would be late.
        free_from = max(until, membership_ran_out)
        late = [now for now in takeover.joins_before[unit] if now >= free_from]
        assert len(late) <= 1, f"partition {unit}: free from {free_from}, still not taken at heartbeats {late}"
        took_ms = max(took_ms, takeover.taken_at[unit] - last_heartbeat)
    gaps = [b - a for a, b in itertools.pairwise(takeover.joins)]
    # Its heartbeats come every third of a lease: at least two of them in a row, whatever the load
    # did to the others (a late one only moves the takeover to the next, checked above).
    assert gaps and min(gaps) <= LEASE_MS / 2, f"the survivor's heartbeats came {gaps} ms apart"
    print(f"rebalance after SIGKILL: {took_ms / 1000:.2f} s after the victim's last heartbeat on the server's "
          f"clock (lease {LEASE_MS} ms, survivor's heartbeats {min(gaps, default=0)}..{max(gaps, default=0)} ms apart)")


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
