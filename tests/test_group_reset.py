"""`fraud group reset` against a live server: a stage's group moved on every one of its inputs."""

from __future__ import annotations

import argparse
import re
from collections import Counter
from typing import Any

import pytest
import redis

from pipeline.cli.main import build_parser
from pipeline.core.errors import FraudError
from pipeline.core.keys import Keys
from pipeline.core.partitions import partition_of
from pipeline.core.settings import Settings
from pipeline.ops.setup import set_up
from tests.arrival import xadd_at_event_time
from tests.helpers import run_burst, run_pipeline
from tests.outputs import read_partitions, stats_totals

BASE_MS = 1_700_000_000_000
MAX_SEQ = 2**64 - 1


async def run(settings: Settings, *argv: str) -> int:
    args: argparse.Namespace = build_parser().parse_args(list(argv))
    return int(await args.run(args, settings) or 0)


def groups_on(settings: Settings, stream_name: str, group: str) -> list[dict[str, Any]]:
    """XINFO GROUPS' entry for `group` on every partition's `stream_name` (``input``, ``verdicts``)."""
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        return [next(g for g in client.xinfo_groups(getattr(part, stream_name)) if g["name"] == group)
                for part in Keys(settings.namespace).partitions(settings.partitions)]


def raw_group(settings: Settings) -> dict[str, Any]:
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        return next(g for g in client.xinfo_groups(Keys(settings.namespace).raw) if g["name"] == "router")


def click(i: int) -> list[str]:
    return ["device_id", f"d{i}", "ip", "10.2.0.1", "ts", str(BASE_MS + i * 1000), "transaction_id", f"t{i}"]


async def test_dry_run_then_execute_re_delivers_after_the_id_in_every_partition(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    ids = xadd_at_event_time(settings, [click(i) for i in range(6)])
    await run_pipeline(settings)
    before = groups_on(settings, "input", "detector")

    assert await run(settings, "group", "reset", "--stage", "detector", "--to-id", ids[2]) == 0
    out = capsys.readouterr().out
    assert "would re-deliver 3 entries" in out and "dry run" in out
    assert groups_on(settings, "input", "detector") == before

    assert await run(settings, "group", "reset", "--stage", "detector", "--to-id", ids[2], "--execute") == 0
    assert "re-delivers 3 entries" in capsys.readouterr().out
    after = groups_on(settings, "input", "detector")
    # Each partition's lag is exactly its clicks after the id; a partition whose newest click is
    # older stands at that click (nothing after it to re-deliver).
    later = Counter(partition_of(f"d{i}", settings.partitions) for i in range(3, 6))
    assert [g["lag"] for g in after] == [later[p] for p in range(settings.partitions)]
    for p, group in enumerate(after):
        if later[p]:
            assert group["last-delivered-id"] == ids[2]
        else:
            assert group["last-delivered-id"] == before[p]["last-delivered-id"]

    agent = await run_burst(settings, "detector")
    # Exactly the three clicks after the id came again; the dedup window swallowed them.
    assert agent.processed == 3
    with redis.Redis.from_url(settings.redis_url) as client:
        assert stats_totals(client, settings)["detector.duplicate"] == 3
        assert len(read_partitions(client, settings, "verdicts")) == 6
    assert [g["lag"] for g in groups_on(settings, "input", "detector")] == [0] * settings.partitions


async def test_a_re_delivered_malformed_entry_gets_no_second_dead_letter(settings: Settings) -> None:
    bad = [["device_id", f"d{i}", "ip", "10.2.0.1", "ts", "not-a-time"] for i in range(4)]
    xadd_at_event_time(settings, [click(i) for i in range(4)] + bad)
    await run_pipeline(settings)
    with redis.Redis.from_url(settings.redis_url) as client:
        dead_before = len(read_partitions(client, settings, "dead"))
    assert dead_before == 4

    assert await run(settings, "group", "reset", "--stage", "detector", "--to-earliest", "--execute") == 0
    agent = await run_burst(settings, "detector")
    assert agent.processed == 8
    with redis.Redis.from_url(settings.redis_url) as client:
        # Every entry came again and none got a second outcome: clicks nor dead letters.
        assert len(read_partitions(client, settings, "dead")) == 4
        assert len(read_partitions(client, settings, "verdicts")) == 4
        totals = stats_totals(client, settings)
        assert totals["detector.duplicate"] == 8 and totals["detector.dead"] == 4


async def test_by_time_earliest_latest_on_the_router_and_on_partitions(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    keys = Keys(settings.namespace)
    await set_up(settings)
    with redis.Redis.from_url(settings.redis_url) as client:
        for ms in (1000, 2000, 2000, 3000):
            client.xadd(keys.raw, {"device_id": "d", "ip": "10.0.0.1"}, id=f"{ms}-*")
            client.xadd(keys.partition(0).input, {"device_id": "d", "ip": "10.0.0.1"}, id=f"{ms}-*")
        client.xadd(keys.partition(1).input, {"device_id": "e", "ip": "10.0.0.1"}, id="1000-0")

    # The router's one input, clicks:raw: entries at the time itself are delivered again.
    assert await run(settings, "group", "reset", "--stage", "router", "--to-latest", "--execute") == 0
    assert raw_group(settings)["last-delivered-id"] == "3000-0"
    assert "skips 4 entries" in capsys.readouterr().out
    assert await run(settings, "group", "reset", "--stage", "router", "--to-time", "2000", "--execute") == 0
    assert (raw_group(settings)["last-delivered-id"], raw_group(settings)["lag"]) == (f"1999-{MAX_SEQ}", 3)
    assert "re-delivers 3 entries" in capsys.readouterr().out
    assert await run(settings, "group", "reset", "--stage", "router", "--to-earliest", "--execute") == 0
    assert (raw_group(settings)["last-delivered-id"], raw_group(settings)["lag"]) == ("0-0", 4)
    assert "re-delivers 1 entries" in capsys.readouterr().out
    with pytest.raises(FraudError, match="beyond the last id of"):
        await run(settings, "group", "reset", "--stage", "router", "--to-time", "2999-01-01T00:00:00Z")

    # Partitions end at different ids: one whose newest entry is older than the time stands at it.
    assert await run(settings, "group", "reset", "--stage", "detector", "--to-time", "2000", "--execute") == 0
    out = capsys.readouterr().out
    # From the start: partition 0 skips its click at 1000 ms, partition 1 its only one.
    assert "1000-0 (its end)" in out and "skips 2 entries" in out
    groups = groups_on(settings, "input", "detector")
    assert [(g["last-delivered-id"], g["lag"]) for g in groups[:3]] == [
        (f"1999-{MAX_SEQ}", 3), ("1000-0", 0), ("0-0", 0)]
    assert await run(settings, "group", "reset", "--stage", "detector", "--partition", "0", "--to-earliest",
                     "--execute") == 0
    assert [g["lag"] for g in groups_on(settings, "input", "detector")][:2] == [4, 0]
    with pytest.raises(FraudError, match="beyond the last id of every partition"):
        await run(settings, "group", "reset", "--stage", "detector", "--to-time", "2999-01-01T00:00:00Z")


async def test_refused_while_the_stage_has_live_members_or_leases(settings: Settings) -> None:
    """Live by the server's clock, as the runtime records them: a member's heartbeat, a lease's `until`."""
    keys = Keys(settings.namespace)
    await set_up(settings)
    xadd_at_event_time(settings, [click(i) for i in range(4)])
    await run_burst(settings, "router")
    before = groups_on(settings, "input", "detector")
    argv = ("group", "reset", "--stage", "detector", "--to-latest", "--execute")
    with redis.Redis.from_url(settings.redis_url) as client:
        now_ms = int(client.time()[0]) * 1000
        hour = 3_600_000
        # Ran out long ago: no obstacle.
        client.zadd(keys.members("detector"), {"gone": now_ms - hour})
        client.hset(keys.partition(2).lease("detector"), mapping={"owner": "gone", "epoch": 1, "until": now_ms - hour})
        client.zadd(keys.members("detector"), {"worker-1": now_ms + hour})
        client.hset(keys.partition(3).lease("detector"),
                    mapping={"owner": "worker-1", "epoch": 2, "until": now_ms + hour})
    part3 = keys.partition(3).input
    with pytest.raises(FraudError, match=re.escape(f"live members worker-1 and live leases on {part3} by worker-1")):
        await run(settings, *argv)
    assert groups_on(settings, "input", "detector") == before
    with redis.Redis.from_url(settings.redis_url) as client:
        client.zrem(keys.members("detector"), "worker-1")
    with pytest.raises(FraudError, match=r"has live leases on .* by worker-1: stop its agents"):
        await run(settings, *argv)

    assert await run(settings, *argv, "--force") == 0
    assert [g["lag"] for g in groups_on(settings, "input", "detector")] == [0] * settings.partitions
    # Another stage's members are no obstacle.
    assert await run(settings, "group", "reset", "--stage", "router", "--to-earliest", "--execute") == 0


async def test_unknown_partitions_and_stages_are_refused(settings: Settings) -> None:
    await set_up(settings)
    with pytest.raises(FraudError, match=f"no partition {settings.partitions}: the pipeline has"):
        await run(settings, "group", "reset", "--stage", "detector", "--partition", str(settings.partitions),
                  "--to-earliest")
    with pytest.raises(FraudError, match="stage router has no partitions"):
        await run(settings, "group", "reset", "--stage", "router", "--partition", "0", "--to-earliest")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["group", "reset", "--stage", "nope", "--to-earliest"])
    with redis.Redis.from_url(settings.redis_url) as client:
        client.delete(Keys(settings.namespace).partition(5).verdicts)
    with pytest.raises(FraudError, match=r"no stream .*verdicts"):
        await run(settings, "group", "reset", "--stage", "aggregator", "--to-earliest")
