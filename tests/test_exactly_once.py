"""Exactly-once under fire: agents SIGKILLed at random while 100k clicks flow, then a full audit.

Plus the two mechanisms that make it hold, each on its own: a batch is acknowledged only with
its effects (a failing step leaves it pending, to be applied later exactly once), and the fence
(a consumer cannot apply entries that another consumer has claimed meanwhile).
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import redis

from agents.detector import Detector
from agents.generator import blacklisted_ips, traffic
from pipeline.blacklist import add_ips
from pipeline.connection import open_fast_client, open_redis
from pipeline.keys import AGGREGATOR_GROUP, DETECTOR_GROUP, Keys
from pipeline.runtime import BatchContext, Entry, StreamAgent
from pipeline.settings import Settings
from tests.accounting import Outcomes, check_exactly_once
from tests.helpers import run_burst, xadd_all
from tests.procs import group_state, pipeline_drained, spawn_agent, stop_all, wait_until

CLICKS = 100_000
SEED = 31
MIN_KILLS = 12


def load_blacklist(settings: Settings) -> None:
    async def load() -> None:
        client = await open_redis(settings)
        try:
            await add_ips(client, Keys(settings.namespace), settings, blacklisted_ips())
        finally:
            await client.aclose()

    asyncio.run(load())


def produce(settings: Settings, labels: list[str], total: int) -> None:
    """The generator's traffic, XADDed in pipelined batches by one producer (so raw order = labels order)."""
    clicks = traffic(SEED, lambda: int(time.time() * 1000))
    keys = Keys(settings.namespace)
    with redis.Redis.from_url(settings.redis_url) as client:
        while len(labels) < total:
            pipe = client.pipeline(transaction=False)
            for _ in range(min(1000, total - len(labels))):
                fields, label = next(clicks)
                pipe.execute_command("XADD", keys.raw, "*", *fields)
                labels.append(label)
            pipe.execute()


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


def test_random_sigkills_keep_every_click_exactly_once(settings: Settings, tmp_path: Path) -> None:
    load_blacklist(settings)
    keys = Keys(settings.namespace)
    # Enough deliveries that repeated kills alone never dead-letter a good click.
    env = {"FRAUD_MAX_DELIVERIES": "30"}
    rng = random.Random(SEED)
    names = {"detector": 0, "aggregator": 0}

    def start(stage: str, consumer: str | None = None) -> tuple[str, str, subprocess.Popen[bytes]]:
        if consumer is None:
            names[stage] += 1
            consumer = f"{stage}-{names[stage]}"
        return stage, consumer, spawn_agent(settings.redis_url, stage, consumer, env, log=tmp_path / "agents.log")

    slots = [start("detector"), start("detector"), start("aggregator")]
    everyone = [slot[2] for slot in slots]
    labels: list[str] = []
    producer = threading.Thread(target=produce, args=(settings, labels, CLICKS))
    kills = kills_holding = 0
    started = time.monotonic()
    try:
        with redis.Redis.from_url(settings.redis_url) as client:
            wait_until(lambda: group_state(client, keys.raw, DETECTOR_GROUP) is not None
                       and group_state(client, keys.verdicts, AGGREGATOR_GROUP) is not None, 30, "the groups")
            producer.start()
            while kills < MIN_KILLS or producer.is_alive():
                assert time.monotonic() - started < 90, "the chaos phase took too long"
                time.sleep(rng.uniform(0.3, 1.5))
                index = rng.randrange(len(slots))
                stage, consumer, process = slots[index]
                process.kill()
                process.wait()
                kills += 1
                stream = keys.raw if stage == "detector" else keys.verdicts
                held = client.xpending_range(stream, stage, "-", "+", 1, consumername=consumer)
                kills_holding += bool(held)
                # Half come back under the same name (they re-read their own pending entries first),
                # half under a new one (their old entries are reclaimed by XAUTOCLAIM).
                slots[index] = start(stage, consumer if rng.random() < 0.5 else None)
                everyone.append(slots[index][2])
            assert all(slot[2].poll() is None for slot in slots), "an agent exited by itself"
            wait_until(lambda: pipeline_drained(client, keys), 90, "the pipeline to drain")
    finally:
        if producer.is_alive():
            producer.join()
        stop_all(everyone)
    assert len(labels) == CLICKS
    print(f"chaos: {kills} kills, {kills_holding} holding entries")
    assert kills_holding >= 3, f"only {kills_holding} of {kills} kills hit an agent holding entries"

    out = check_exactly_once(settings)
    assert len(out.raw) == CLICKS
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

    async def handle(self, ctx: BatchContext, entries: Sequence[Entry]) -> list[bytes]:
        if self.good_batches == 0:
            raise ConnectionResetError("simulated crash between read and commit")
        self.good_batches -= 1
        return await super().handle(ctx, entries)


def clicks(n: int) -> list[list[str]]:
    return [["device_id", f"dev-{i % 50}", "ip", "192.0.2.1", "transaction_id", f"tx-{i}", "ts", str(10_000 * i)]
            for i in range(n)]


async def test_batch_is_committed_only_after_its_step_succeeds(settings: Settings) -> None:
    settings = Settings(redis_url=settings.redis_url, home=settings.home, batch_size=100, claim_min_idle_ms=100)
    ids = xadd_all(settings, clicks(1000))
    agent = StreamAgent(FailingDetector(settings, good_batches=3), settings, burst=True, consumer="a")
    await agent.start()
    await asyncio.sleep(0.5)  # it fails on its fourth batch and keeps failing (connection-type errors retry)
    await agent.stop()
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        pending = client.xpending_range(Keys().raw, DETECTOR_GROUP, "-", "+", 10_000)
        done = client.xlen(Keys().verdicts)
    assert done == 300, "exactly the three good batches were applied"
    assert [p["message_id"] for p in pending] == ids[300:400], "the failed batch is still pending, unapplied"
    assert {p["consumer"] for p in pending} == {"a"}

    await asyncio.sleep(0.2)
    await run_burst(settings, "detector", consumer="b")  # reclaims a's batch, then reads the rest
    out = check_exactly_once(settings, aggregated=False)
    assert sorted(out.verdicts) == sorted(i.encode() for i in ids)


async def test_fence_refuses_entries_claimed_by_another_consumer(settings: Settings) -> None:
    keys = Keys(settings.namespace)
    ids = xadd_all(settings, clicks(10))
    client = await open_fast_client(settings)
    agent = StreamAgent(Detector(settings), settings, consumer="a")
    agent.client = client
    try:
        await agent.prepare()
        entries = await agent.read(">", block=False)
        assert [e[0].decode() for e in entries] == ids
        with redis.Redis.from_url(settings.redis_url, decode_responses=True) as sync:
            sync.xclaim(keys.raw, DETECTOR_GROUP, "b", 0, ids[3:6])
        fenced = await agent.handler.handle(agent.context(), entries)
        assert sorted(fenced) == sorted(i.encode() for i in ids[3:6])
        with redis.Redis.from_url(settings.redis_url, decode_responses=True) as sync:
            assert sync.xlen(keys.verdicts) == 0, "a fenced step wrote verdicts"
            assert sync.exists(keys.stats) == 0
            assert sync.xpending(keys.raw, DETECTOR_GROUP)["pending"] == 10, "a fenced step acknowledged entries"
        # The runtime drops the fenced entries and applies its own; b's stay b's.
        await agent.process(entries, redelivered=False)
        with redis.Redis.from_url(settings.redis_url, decode_responses=True) as sync:
            verdicts = [fields for _, fields in sync.xrange(keys.verdicts)]
            assert sorted(v["raw_id"] for v in verdicts) == sorted(ids[:3] + ids[6:])
            assert [p["message_id"] for p in sync.xpending_range(keys.raw, DETECTOR_GROUP, "-", "+", 100)] \
                == ids[3:6]
    finally:
        await client.close()
