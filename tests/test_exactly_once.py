"""Exactly-once under fire: agents SIGKILLed while they own partitions with uncommitted work,
while 100k clicks flow; then a full audit against the independent sequential model.

Plus the two mechanisms that make it hold, each on its own: an offset is committed only with its
batch's effects (a failing step commits nothing; the batch is applied later, once), and the fence
(a former owner whose lease moved on can apply nothing).
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import redis

from agents.detector import Detector
from agents.generator import blacklisted_ips, traffic
from agents.pipeline import DETECTOR
from pipeline.client.connection import open_fast_client
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.runtime.agent import StreamAgent
from pipeline.runtime.leases import Assignment
from pipeline.runtime.stage import BatchContext, Entry
from tests.accounting import Outcomes, check_exactly_once
from tests.helpers import list_ips, run_burst, xadd_all
from tests.outputs import check_commit_logs, group_state, lease_owners, lease_ran_out, pipeline_drained
from tests.procs import freeze, kill_and_settle, spawn_agent, stop_all, thaw, uncommitted_owned, wait_until
from tests.rule_model import RuleModel, ip_address

CLICKS = 100_000
SEED = 31
# Kills of an agent that owned partitions with uncommitted entries: the test goes on until it has made this many.
HOLDING_KILLS = 12
# Every this-many-th kill strikes whatever the agent is doing (blocked in a read, starting up...).
BLIND_KILL_EVERY = 4
# The producer's pace: the flow must outlast the kills, so that they fall inside it.
CLICKS_PER_BATCH = 500
BATCH_INTERVAL_S = 0.1
CHAOS_LIMIT_S = 150


class Producer(threading.Thread):
    """The generator's traffic, XADDed at a steady pace by one producer (so raw order = labels order),
    until at least ``total`` clicks are in and the chaos is over."""

    def __init__(self, settings: Settings, total: int) -> None:
        super().__init__()
        self.settings = settings
        self.total = total
        self.labels: list[str] = []
        self.chaos_over = threading.Event()

    def run(self) -> None:
        clicks = traffic(SEED, lambda: int(time.time() * 1000))
        raw = Keys(self.settings.namespace).raw
        with redis.Redis.from_url(self.settings.redis_url) as client:
            while len(self.labels) < self.total or not self.chaos_over.is_set():
                pipe = client.pipeline(transaction=False)
                for _ in range(CLICKS_PER_BATCH):
                    fields, label = next(clicks)
                    pipe.execute_command("XADD", raw, "*", *fields)
                    self.labels.append(label)
                pipe.execute()
                time.sleep(BATCH_INTERVAL_S)


def model_outcomes(out: Outcomes, settings: Settings) -> list[str]:
    """Each raw entry's outcome as the independent sequential model gives it, in raw order."""
    model = RuleModel(settings.click_spam_window_ms, settings.click_spam_threshold, settings.dedup_horizon_ms,
                      settings.max_future_ms, settings.max_field_count, settings.max_field_bytes,
                      frozenset(ip_address(ip) for ip in blacklisted_ips()))
    return [model.outcome(entry_id.decode(), flat) for entry_id, flat in out.raw]


def pipeline_outcomes(out: Outcomes) -> list[str]:
    """Each raw entry's outcome as the pipeline gave it: its verdict, its dead letter's reason code, or duplicate."""
    def outcome(entry_id: bytes) -> str:
        if entry_id in out.verdicts:
            return out.verdicts[entry_id][b"verdict"].decode()
        if entry_id in out.dead:
            return out.dead[entry_id][b"reason"].decode().split(":", 1)[0]
        return "duplicate"

    return [outcome(entry_id) for entry_id, _ in out.raw]


@dataclass
class Slot:
    stage: str
    consumer: str
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)

    def age(self) -> float:
        return time.monotonic() - self.started


def test_sigkills_of_partition_owners_keep_every_click_exactly_once(settings: Settings, tmp_path: Path) -> None:
    """SIGKILLs while traffic flows, most of them certain to hit an agent owning partitions with
    uncommitted entries: the victim is frozen (SIGSTOP) first and killed only if it then owns
    some, so it cannot commit them in between; whatever it had already sent, Redis runs before
    the count is taken. Then every click's outcome is the sequential model's, exactly once."""
    asyncio.run(list_ips(settings, blacklisted_ips()))
    rng = random.Random(SEED)
    names = {"detector": 0, "aggregator": 0}
    log = tmp_path / "agents.log"
    # More attempts than the test has kills: repeated kills at one offset alone never dead-letter a
    # good click (tests/test_poison_crash.py is where the attempt limit is tested).
    env = {"FRAUD_MAX_ATTEMPTS": str(10 * HOLDING_KILLS)}

    def start(stage: str, consumer: str | None = None) -> Slot:
        if consumer is None:
            names[stage] += 1
            consumer = f"{stage}-{names[stage]}"
        return Slot(stage, consumer, spawn_agent(settings.redis_url, stage, consumer, env, log=log))

    router = spawn_agent(settings.redis_url, "router", "router-1", log=log)
    slots = [start("detector"), start("detector"), start("aggregator")]
    everyone = [router, *(slot.process for slot in slots)]
    producer = Producer(settings, CLICKS)
    attempts = kills = kills_holding = 0
    started = time.monotonic()
    try:
        with redis.Redis.from_url(settings.redis_url) as client:
            wait_until(lambda: all(lease_owners(client, settings, stage) and all(
                lease_owners(client, settings, stage).values()) for stage in ("router", "detector", "aggregator")),
                30, "every partition of every stage to have an owner")
            producer.start()
            while kills_holding < HOLDING_KILLS:
                assert time.monotonic() - started < CHAOS_LIMIT_S, \
                    f"only {kills_holding} of {kills} kills hit an agent owning uncommitted work in {CHAOS_LIMIT_S} s"
                assert producer.is_alive(), "the producer died"
                time.sleep(rng.uniform(0.05, 0.3))
                index = rng.randrange(len(slots))
                slot = slots[index]
                if slot.age() < 1.0:
                    continue  # still starting: let it connect and take up its partitions first
                attempts += 1
                blind = attempts % BLIND_KILL_EVERY == 0
                holding = False
                if not blind:
                    freeze(slot.process)
                    holding = uncommitted_owned(client, settings, slot.stage, slot.consumer) > 0
                    if not holding:
                        thaw(slot.process)
                        continue
                kill_and_settle(client, slot.process)
                kills += 1
                kills_holding += holding
                # Half come back under the same name (a new epoch of their own leases), half under
                # a new one (their partitions go to others when their leases run out).
                slots[index] = start(slot.stage, slot.consumer if rng.random() < 0.5 else None)
                everyone.append(slots[index].process)
            producer.chaos_over.set()
            producer.join(60)
            assert not producer.is_alive(), "the producer did not finish"
            assert all(slot.process.poll() is None for slot in slots), "an agent exited by itself"
            assert router.poll() is None, "the router exited by itself"
            wait_until(lambda: pipeline_drained(client, settings), 90, "the pipeline to drain")
            epochs = check_commit_logs(client, settings)
    finally:
        producer.chaos_over.set()
        for slot in slots:
            if slot.process.poll() is None:
                thaw(slot.process)
        if producer.is_alive():
            producer.join()
        stop_all(everyone)
    labels = producer.labels
    print(f"chaos: {kills} kills, {kills_holding} owning uncommitted work, {len(labels)} clicks, {epochs} epochs")
    assert kills_holding >= HOLDING_KILLS

    out = check_exactly_once(settings)
    assert len(out.raw) == len(labels) >= CLICKS
    raw_ids = [entry_id for entry_id, _ in out.raw]
    malformed = {raw_ids[i] for i, label in enumerate(labels) if label == "malformed"}
    assert set(out.dead) == malformed
    assert all(not d[b"reason"].startswith(b"error") for d in out.dead.values())
    assert len(out.duplicates) == labels.count("retry")
    got, expected = pipeline_outcomes(out), model_outcomes(out, settings)
    wrong = [(raw_ids[i], g, e) for i, (g, e) in enumerate(zip(got, expected, strict=True)) if g != e]
    assert not wrong, f"{len(wrong)} outcomes differ from the model's (id, got, expected): {wrong[:10]}"
class FailingDetector(Detector):
    """A detector whose step fails after a number of good batches, as a crash between read and ack would."""

    def __init__(self, settings: Settings, good_batches: int) -> None:
        super().__init__(settings)
        self.good_batches = good_batches
        self.failed = asyncio.Event()

    async def handle(self, ctx: BatchContext, entries: Sequence[Entry]) -> list[bytes]:
        if self.good_batches == 0:
            self.failed.set()
            raise ConnectionResetError("simulated crash between read and commit")
        self.good_batches -= 1
        return await super().handle(ctx, entries)


def clicks(n: int) -> list[list[str]]:
    # No ts: each click's event time is its arrival, always within the accepted range.
    return [["device_id", f"dev-{i % 50}", "ip", "192.0.2.1", "transaction_id", f"tx-{i}"]
            for i in range(n)]


def one_partition(settings: Settings) -> Settings:
    """One partition and small batches, so that batches are easy to name."""
    return replace(settings, partitions=1, batch_size=100)


async def test_offset_is_committed_only_with_its_batch(settings: Settings) -> None:
    settings = one_partition(settings)
    part = Keys(settings.namespace).partition(0)
    ids = xadd_all(settings, clicks(1000))
    await run_burst(settings, "router")
    handler = FailingDetector(settings, good_batches=3)
    agent = StreamAgent(DETECTOR, settings, handler=handler, burst=True, consumer="a")
    await agent.start()
    # It fails on its fourth batch and keeps failing (connection-type errors are retried).
    await asyncio.wait_for(handler.failed.wait(), 30)
    await agent.stop()
    with redis.Redis.from_url(settings.redis_url) as client:
        assert client.xlen(part.verdicts) == 300, "exactly the three good batches were applied"
        assert group_state(client, part.input, DETECTOR.name) == (700, 0), "the failed batch was not committed"
        info = {g["name"]: g for g in client.xinfo_groups(part.input)}[DETECTOR.name.encode()]
        assert info["last-delivered-id"].decode() == ids[299]

    wait_until(lambda: lease_ran_out(settings, "detector", 0), 30, "a's lease to run out")
    await run_burst(settings, "detector", consumer="b")  # takes the partition at a's offset, reads the rest
    out = check_exactly_once(settings, aggregated=False)
    assert sorted(out.verdicts) == sorted(i.encode() for i in ids)


@asynccontextmanager
async def member_a_holding_partition_0(settings: Settings) -> AsyncIterator[tuple[StreamAgent, list[str]]]:
    """Ten clicks routed into the one partition, and detector member `a` holding its lease (not
    polling on its own: the test drives it). Yields the member and the clicks' ids."""
    ids = xadd_all(settings, clicks(10))
    await run_burst(settings, "router")
    client = await open_fast_client(settings)
    agent = StreamAgent(DETECTOR, settings, consumer="a")
    agent.client = client
    try:
        await agent.prepare()
        agent.assignment = Assignment(client, DETECTOR, agent.keys, settings, "a")
        await agent.rebalance()
        assert list(agent.cursors) == [0]
        yield agent, ids
    finally:
        await client.close()


async def test_a_batch_read_ahead_of_a_fenced_step_is_dropped(settings: Settings) -> None:
    """Behind a full batch a member reads the next one while its step runs. When that step is
    fenced (the lease moved and the new owner committed everything), the batch read ahead is not
    used: the member, given the partition back, resumes at the new owner's offset and judges nothing
    again."""
    settings = replace(settings, partitions=1, batch_size=5)
    part = Keys(settings.namespace).partition(0)
    async with member_a_holding_partition_0(settings) as (agent, ids):
        wait_until(lambda: lease_ran_out(settings, "detector", 0), 30, "a's lease to run out")
        taker = await run_burst(settings, "detector", consumer="b")  # commits all ten, then leaves
        assert taker.processed == 10
        with redis.Redis.from_url(settings.redis_url) as sync:
            before = (sync.xlen(part.verdicts), sync.hgetall(part.stats))

        # a's poll, its heartbeat not yet due: a full batch of the first five (so the next five are
        # read ahead, from the fifth's id), and its step fenced.
        agent._next_heartbeat = agent._next_maintenance = time.monotonic() + 1
        await agent.poll_once()
        assert agent.processed == 0
        # The next poll heartbeats: a takes the partition back at b's offset, past the batch read ahead.
        agent._next_heartbeat = 0.0
        assert await agent.poll_once(), "nothing was left to read after b's offset"
        assert agent.cursors == {0: ids[-1].encode()}
        assert agent.processed == 0
        with redis.Redis.from_url(settings.redis_url) as sync:
            assert (sync.xlen(part.verdicts), sync.hgetall(part.stats)) == before
        out = check_exactly_once(settings, aggregated=False)
        assert sorted(out.verdicts) == sorted(i.encode() for i in ids)


async def test_fence_refuses_a_former_owner(settings: Settings) -> None:
    """A member reads a batch, stalls, its lease moves to another member which commits the batch:
    the former owner's step applies nothing, and the runtime stops reading that partition."""
    settings = one_partition(settings)
    part = Keys(settings.namespace).partition(0)
    async with member_a_holding_partition_0(settings) as (agent, ids):
        entries = (await agent.read(block=False))[0]
        assert [e[0].decode() for e in entries] == ids
        stale = agent.context(0)

        wait_until(lambda: lease_ran_out(settings, "detector", 0), 30, "a's lease to run out")
        taker = await run_burst(settings, "detector", consumer="b")
        assert taker.processed == 10
        with redis.Redis.from_url(settings.redis_url) as sync:
            before = (sync.xlen(part.verdicts), sync.hgetall(part.stats), sync.xlen(part.commits(DETECTOR.name)))

        fenced = await agent.handler.handle(stale, entries)
        assert fenced[:1] == [b"lease"], fenced
        await agent.process(0, entries)  # the runtime's own path: fenced, it lets the partition go
        assert 0 not in agent.cursors and 0 not in agent.assignment.owned
        with redis.Redis.from_url(settings.redis_url) as sync:
            after = (sync.xlen(part.verdicts), sync.hgetall(part.stats), sync.xlen(part.commits(DETECTOR.name)))
        assert after == before, "a fenced step changed the partition"
        out = check_exactly_once(settings, aggregated=False)
        assert sorted(out.verdicts) == sorted(i.encode() for i in ids)
        with redis.Redis.from_url(settings.redis_url) as sync:
            check_commit_logs(sync, settings)
