"""A pending entry deleted from its stream (XDEL, or a trim) still gets exactly one outcome:
a `deleted` dead letter, written in the same step as the claim that finds it gone."""

from __future__ import annotations

from dataclasses import replace

import redis

from agents.pipeline import AGGREGATOR, DETECTOR
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from tests.helpers import run_burst, verdicts_by_raw_id, xadd_all
from tests.procs import group_state

HOLDER = "holder"


async def test_entries_deleted_while_pending_are_dead_lettered_once(settings: Settings) -> None:
    # An hour of min idle: nothing is reclaimed for being idle, so what maintenance acts on below
    # is only what is gone.
    settings = replace(settings, claim_min_idle_ms=3_600_000)
    keys = Keys(settings.namespace)
    ids = xadd_all(settings, [["device_id", f"d{i}", "ip", f"192.0.2.{i}"] for i in range(10)])
    with redis.Redis.from_url(settings.redis_url) as client:
        client.xgroup_create(keys.raw, DETECTOR.name, "0")
        # Another consumer holds every entry, pending.
        client.xreadgroup(DETECTOR.name, HOLDER, {keys.raw: ">"})
        # Gone while pending: the oldest by a trim, one in the middle by XDEL.
        assert client.xtrim(keys.raw, minid=ids[1], approximate=False) == 1
        assert client.xdel(keys.raw, ids[5]) == 1
    gone = {ids[0], ids[5]}

    # Maintenance of a second consumer (its first poll) finds them.
    other = await run_burst(settings, "detector", consumer="other")
    assert other.processed == 0, "nothing idle long enough was taken from the holder"
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        letters = [fields for _, fields in client.xrange(keys.dead)]
        assert sorted(letter["raw_id"] for letter in letters) == sorted(gone)
        for letter in letters:
            assert list(letter) == ["reason", "stage", "raw_id", "deliveries"], "no fields: the entry is gone"
            assert letter["reason"].startswith("deleted")
            assert (letter["stage"], letter["deliveries"]) == ("detector", "1")
        assert client.hget(keys.stats, "detector.dead") == "2"
        assert client.xpending(keys.raw, DETECTOR.name)["pending"] == 8, "the deleted ids left the PEL"

    # The holder comes back and does the rest: every click has exactly one outcome.
    await run_burst(settings, "detector", consumer=HOLDER)
    await run_burst(settings, "aggregator")
    await run_burst(settings, "detector", consumer="other")  # maintenance again finds nothing more
    verdicts = verdicts_by_raw_id(settings)
    assert set(verdicts) == set(ids) - gone
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        assert client.xlen(keys.dead) == 2
        stats = client.hgetall(keys.stats)
        assert int(stats["detector.dead"]) == 2
        assert sum(int(stats.get(f"detector.{v}", 0)) for v in ("clean", "ip_blacklist", "click_spam")) == 8
        assert int(stats["aggregator.counted"]) == 8
        assert group_state(client, keys.raw, DETECTOR.name)[1] == 0
        assert group_state(client, keys.verdicts, AGGREGATOR.name) == (0, 0)
