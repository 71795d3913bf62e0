"""Exactly-once under fire: agents SIGKILLed at random while 100k clicks flow, then a full audit.

Plus the two mechanisms that make it hold, each on its own: a batch is acknowledged only with
its effects (a failing step leaves it pending, to be applied later exactly once), and the fence
(a consumer cannot apply entries that another consumer has claimed meanwhile).
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from agents.detector import Detector
from agents.generator import blacklisted_ips, traffic
from agents.pipeline import AGGREGATOR, DETECTOR
from pipeline.client.connection import open_fast_client, open_redis
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.ops.blacklist import add_ips
from pipeline.runtime.agent import StreamAgent
from pipeline.runtime.stage import BatchContext, Entry
from tests.accounting import Outcomes, check_exactly_once
from tests.helpers import run_burst, xadd_all
from tests.procs import (
    entries_held,
    freeze,
    group_state,
    kill_and_settle,
    pipeline_drained,
    spawn_agent,
    stop_all,
    wait_pending_idle,
    wait_until,
)

CLICKS = 100_000
SEED = 31
# Kills that hit an agent holding entries it had read: the test goes on until it has made this many.
HOLDING_KILLS = 12
# Every this-many-th kill strikes whatever the agent is doing (blocked in a read, starting up...).
BLIND_KILL_EVERY = 4
# The producer's pace: the flow must outlast the kills, so that they fall inside it.
CLICKS_PER_BATCH = 500
BATCH_INTERVAL_S = 0.1
CHAOS_LIMIT_S = 120


def load_blacklist(settings: Settings) -> None:
    async def load() -> None:
        client = await open_redis(settings)
        try:
            await add_ips(client, Keys(settings.namespace), settings, blacklisted_ips())
        finally:
            await client.aclose()

    asyncio.run(load())


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


def reference_verdicts(out: Outcomes, settings: Settings) -> dict[bytes, str]:
    """The rules replayed in Python in the order the verdicts were written (which is processing order)."""
    listed = {ip.encode() for ip in blacklisted_ips()}
    window: dict[bytes, list[int]] = defaultdict(list)
    expected: dict[bytes, str] = {}
    for raw_id in out.verdict_order:
        fields = out.verdicts[raw_id]
        ts = int(fields[b"ts"])
        seen = window[fields[b"device_id"]]
        earlier = sum(1 for t in seen if ts - settings.click_spam_window_ms <= t <= ts)
        seen.append(ts)
        if fields[b"ip"] in listed:
            expected[raw_id] = "ip_blacklist"
        elif earlier >= settings.click_spam_threshold:
            expected[raw_id] = "click_spam"
        else:
            expected[raw_id] = "clean"
    return expected


@dataclass
class Slot:
    stage: str
    consumer: str
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)

    def age(self) -> float:
        return time.monotonic() - self.started


def test_random_sigkills_keep_every_click_exactly_once(settings: Settings, tmp_path: Path) -> None:
    """SIGKILLs while traffic flows, most of them certain to hit an agent holding entries it read:
    the victim is frozen (SIGSTOP) first and killed only if it then holds some, so it cannot
    acknowledge them in between; whatever it had already sent, Redis runs before the count is taken."""
    load_blacklist(settings)
    keys = Keys(settings.namespace)
    # Enough deliveries that repeated kills alone never dead-letter a good click.
    env = {"FRAUD_MAX_DELIVERIES": "30"}
    rng = random.Random(SEED)
    names = {"detector": 0, "aggregator": 0}

    def start(stage: str, consumer: str | None = None) -> Slot:
        if consumer is None:
            names[stage] += 1
            consumer = f"{stage}-{names[stage]}"
        return Slot(stage, consumer, spawn_agent(settings.redis_url, stage, consumer, env, log=tmp_path / "agents.log"))

    slots = [start("detector"), start("detector"), start("aggregator")]
    everyone = [slot.process for slot in slots]
    producer = Producer(settings, CLICKS)
    attempts = kills = kills_holding = 0
    started = time.monotonic()
    try:
        with redis.Redis.from_url(settings.redis_url) as client:
            wait_until(lambda: group_state(client, keys.raw, DETECTOR.name) is not None
                       and group_state(client, keys.verdicts, AGGREGATOR.name) is not None, 30, "the groups")
            producer.start()
            while kills_holding < HOLDING_KILLS:
                assert time.monotonic() - started < CHAOS_LIMIT_S, \
                    f"only {kills_holding} of {kills} kills hit an agent holding entries in {CHAOS_LIMIT_S} s"
                assert producer.is_alive(), "the producer died"
                time.sleep(rng.uniform(0.05, 0.3))
                index = rng.randrange(len(slots))
                slot = slots[index]
                if slot.age() < 1.0:
                    continue  # still starting: let it connect and take up its work first
                attempts += 1
                stream = keys.raw if slot.stage == "detector" else keys.verdicts
                blind = attempts % BLIND_KILL_EVERY == 0
                if not blind:
                    freeze(slot.process)
                    if not entries_held(client, stream, slot.stage, slot.consumer, slot.age()):
                        slot.process.send_signal(signal.SIGCONT)
                        continue
                kill_and_settle(client, slot.process)
                kills += 1
                kills_holding += bool(entries_held(client, stream, slot.stage, slot.consumer, slot.age()))
                # Half come back under the same name (they re-read their own pending entries first),
                # half under a new one (their old entries are reclaimed by XAUTOCLAIM).
                slots[index] = start(slot.stage, slot.consumer if rng.random() < 0.5 else None)
                everyone.append(slots[index].process)
            producer.chaos_over.set()
            producer.join(60)
            assert not producer.is_alive(), "the producer did not finish"
            assert all(slot.process.poll() is None for slot in slots), "an agent exited by itself"
            wait_until(lambda: pipeline_drained(client, keys), 90, "the pipeline to drain")
    finally:
        producer.chaos_over.set()
        for slot in slots:
            if slot.process.poll() is None:
                slot.process.send_signal(signal.SIGCONT)
        if producer.is_alive():
            producer.join()
        stop_all(everyone)
    labels = producer.labels
    print(f"chaos: {kills} kills, {kills_holding} holding entries, {len(labels)} clicks")
    assert kills_holding >= HOLDING_KILLS

    out = check_exactly_once(settings)
    assert len(out.raw) == len(labels) >= CLICKS
    raw_ids = [entry_id for entry_id, _ in out.raw]
    malformed = {raw_ids[i] for i, label in enumerate(labels) if label == "malformed"}
    assert set(out.dead) == malformed
    assert all(not d[b"reason"].startswith((b"max_deliveries", b"error")) for d in out.dead.values())
    assert len(out.duplicates) == labels.count("retry")
    assert {raw_id: v[b"verdict"].decode() for raw_id, v in out.verdicts.items()} == reference_verdicts(
        out, settings)


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


async def test_batch_is_committed_only_after_its_step_succeeds(settings: Settings) -> None:
    settings = Settings(redis_url=settings.redis_url, home=settings.home, batch_size=100, claim_min_idle_ms=100)
    ids = xadd_all(settings, clicks(1000))
    handler = FailingDetector(settings, good_batches=3)
    agent = StreamAgent(DETECTOR, settings, handler=handler, burst=True, consumer="a")
    await agent.start()
    # It fails on its fourth batch and keeps failing (connection-type errors are retried).
    await asyncio.wait_for(handler.failed.wait(), 30)
    await agent.stop()
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        pending = client.xpending_range(Keys().raw, DETECTOR.name, "-", "+", 10_000)
        done = client.xlen(Keys().verdicts)
    assert done == 300, "exactly the three good batches were applied"
    assert [p["message_id"] for p in pending] == ids[300:400], "the failed batch is still pending, unapplied"
    assert {p["consumer"] for p in pending} == {"a"}

    with redis.Redis.from_url(settings.redis_url) as client:
        wait_pending_idle(client, Keys().raw, DETECTOR.name, settings.claim_min_idle_ms)
    await run_burst(settings, "detector", consumer="b")  # reclaims a's batch, then reads the rest
    out = check_exactly_once(settings, aggregated=False)
    assert sorted(out.verdicts) == sorted(i.encode() for i in ids)


async def test_fence_refuses_entries_claimed_by_another_consumer(settings: Settings) -> None:
    keys = Keys(settings.namespace)
    ids = xadd_all(settings, clicks(10))
    client = await open_fast_client(settings)
    agent = StreamAgent(DETECTOR, settings, consumer="a")
    agent.client = client
    try:
        await agent.prepare()
        entries = await agent.read(">", block=False)
        assert [e[0].decode() for e in entries] == ids
        with redis.Redis.from_url(settings.redis_url, decode_responses=True) as sync:
            sync.xclaim(keys.raw, DETECTOR.name, "b", 0, ids[3:6])
        fenced = await agent.handler.handle(agent.context(), entries)
        assert sorted(fenced) == sorted(i.encode() for i in ids[3:6])
        with redis.Redis.from_url(settings.redis_url, decode_responses=True) as sync:
            assert sync.xlen(keys.verdicts) == 0, "a fenced step wrote verdicts"
            assert sync.exists(keys.stats) == 0
            assert sync.xpending(keys.raw, DETECTOR.name)["pending"] == 10, "a fenced step acknowledged entries"
        # The runtime drops the fenced entries and applies its own; b's stay b's.
        await agent.process(entries, redelivered=False)
        with redis.Redis.from_url(settings.redis_url, decode_responses=True) as sync:
            verdicts = [fields for _, fields in sync.xrange(keys.verdicts)]
            assert sorted(v["raw_id"] for v in verdicts) == sorted(ids[:3] + ids[6:])
            assert [p["message_id"] for p in sync.xpending_range(keys.raw, DETECTOR.name, "-", "+", 100)] \
                == ids[3:6]
    finally:
        await client.close()
