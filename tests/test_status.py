"""`fraud status` against a live server: each partition's owner, lag and pending, the totals, exit codes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import orjson
import pytest
import redis

from pipeline.cli.main import main
from pipeline.client.connection import open_redis
from pipeline.core.keys import Keys
from pipeline.core.partitions import partition_of
from pipeline.core.settings import Settings
from pipeline.dev.ports import free_port
from pipeline.ops import status
from pipeline.ops.setup import set_up
from tests.conftest import PROJECT_ROOT
from tests.helpers import run_burst, run_pipeline, xadd_all


def clicks(n: int, first: int = 0) -> list[list[str]]:
    """n valid clicks from distinct devices, each with its own transaction id."""
    return [["device_id", f"dev-{i}", "ip", "198.51.100.7", "transaction_id", f"tx-{i}"]
            for i in range(first, first + n)]


MISSING_DEVICE = ["ip", "198.51.100.7"]


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("FRAUD_REDIS_URL", settings.redis_url)
    return settings


async def status_json(capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict[str, Any], str]:
    """Run `fraud status --json` as the CLI does; returns (exit status, document, stderr)."""
    capsys.readouterr()
    # main() runs its own event loop: off this test's loop, in a thread.
    code = await asyncio.to_thread(main, ["status", "--json", "--interval", "0", *extra])
    out, err = capsys.readouterr()
    return code, orjson.loads(out), err


def by_partition(settings: Settings, devices: list[str]) -> Counter[int]:
    """How many of these devices' clicks each partition receives."""
    return Counter(partition_of(device, settings.partitions) for device in devices)


def xinfo_lag(settings: Settings, stream: str, group: str) -> int | None:
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        return next(g["lag"] for g in client.xinfo_groups(stream) if g["name"] == group)


def unit_figures(doc: dict[str, Any], stage: str) -> list[tuple[int | None, int, bool]]:
    """(lag, pending, lag_estimated) of each of a stage's units, in order."""
    return [(u["lag"], u["pending"], u["lag_estimated"])
            for u in doc["stages"][stage]["units"]]


async def test_before_anything_ran_reports_absent_streams_and_exits_0(
        cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, err = await status_json(capsys, "--max-lag", "0", "--max-pending", "0", "--max-dead", "0")
    assert code == 0, err
    assert err == ""
    keys = Keys(cli_env.namespace)
    ns = cli_env.namespace
    assert {name: (s["key"], s["exists"], s["length"]) for name, s in doc["streams"].items()} == {
        "raw": (keys.raw, False, 0), "input": (f"{ns}:{{*}}:in", False, 0),
        "verdicts": (f"{ns}:{{*}}:verdicts", False, 0), "dead": (f"{ns}:{{*}}:dead", False, 0)}
    # Nothing recorded the partitions yet: the settings' number is shown.
    assert (doc["partitions"], doc["partitions_recorded"]) == (cli_env.partitions, False)
    assert [len(s["units"]) for s in doc["stages"].values()] == [1, cli_env.partitions, cli_env.partitions]
    for stage in doc["stages"].values():
        assert stage["members"] == []
        assert stage["totals"] == {"units": len(stage["units"]), "groups": 0, "owned": 0, "lag": 0,
                                   "lag_estimated": False, "pending": 0, "length": 0}
        assert all(u["lease"] == {"owner": None, "epoch": 0, "until_ms": None, "live": False}
                   for u in stage["units"])
    assert doc["dead_letters"] == {"count": 0, "sampled": 0, "reasons": {}}
    assert doc["stats"] == {}
    assert doc["throughput"] is None


async def test_lag_is_exact_per_partition_in_xinfo_and_in_status(
        cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 10: every partition's group lag, in XINFO GROUPS and in status, is exactly what is left."""
    keys = Keys(cli_env.namespace)
    await set_up(cli_env)
    devices = [f"dev-{i}" for i in range(40)]
    xadd_all(cli_env, clicks(40))
    routed_to = by_partition(cli_env, devices)
    assert len(routed_to) > 1, "the clicks should spread over several partitions"

    code, doc, err = await status_json(capsys)
    assert code == 0, err
    assert doc["partitions_recorded"]
    # Nothing ran: the router's lag is every raw click, the detector's and aggregator's nothing.
    assert unit_figures(doc, "router") == [(40, 0, False)]
    assert unit_figures(doc, "detector") == [(0, 0, False)] * cli_env.partitions

    await run_burst(cli_env, "router")
    code, doc, err = await status_json(capsys)
    expected = [routed_to[p] for p in range(cli_env.partitions)]
    assert unit_figures(doc, "router") == [(0, 0, False)]
    assert unit_figures(doc, "detector") == [(n, 0, False) for n in expected]
    assert [xinfo_lag(cli_env, part.input, "detector") for part in keys.partitions(cli_env.partitions)] == expected
    assert doc["stages"]["detector"]["totals"]["lag"] == 40
    assert doc["stats"]["router.routed"] == 40

    await run_burst(cli_env, "detector")
    code, doc, err = await status_json(capsys)
    assert unit_figures(doc, "detector") == [(0, 0, False)] * cli_env.partitions
    assert [xinfo_lag(cli_env, part.input, "detector") for part in keys.partitions(cli_env.partitions)] == \
        [0] * cli_env.partitions
    # Each click became one verdict in its partition: the aggregator's lag there.
    assert unit_figures(doc, "aggregator") == [(n, 0, False) for n in expected]

    await run_burst(cli_env, "aggregator")
    code, doc, err = await status_json(capsys, "--max-lag", "0", "--max-pending", "0")
    assert code == 0, err
    assert [s["totals"]["lag"] for s in doc["stages"].values()] == [0, 0, 0]
    assert doc["stats"]["aggregator.counted"] == 40


async def test_lag_and_counters_follow_a_real_run(cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    keys = Keys(cli_env.namespace)
    first = xadd_all(cli_env, [*clicks(6), MISSING_DEVICE])
    await run_pipeline(cli_env)
    later = xadd_all(cli_env, clicks(4, first=6))

    code, doc, err = await status_json(capsys)
    assert code == 0, err
    raw, verdicts, dead = (doc["streams"][name] for name in ("raw", "verdicts", "dead"))
    assert (raw["length"], raw["entries_added"], raw["first_id"], raw["last_id"]) == (11, 11, first[0], later[-1])
    assert raw["first_time_ms"] == int(first[0].split("-")[0])
    assert raw["memory_bytes"] > 0
    assert (verdicts["length"], dead["length"], doc["streams"]["input"]["length"]) == (6, 1, 7)
    router = doc["stages"]["router"]["units"][0]
    assert {k: router[k] for k in ("partition", "stream", "pending", "lag", "lag_estimated", "last_delivered_id",
                                   "entries_read")} == {
        "partition": None, "stream": keys.raw, "pending": 0, "lag": 4, "lag_estimated": False,
        "last_delivered_id": first[-1], "entries_read": 7}
    assert doc["stages"]["detector"]["totals"]["lag"] == 0
    assert doc["dead_letters"] == {"count": 1, "sampled": 1, "reasons": {"missing_field": 1}}
    assert sum(n for name, n in doc["stats"].items() if name.startswith("detector.")) == 7
    assert doc["stats"]["aggregator.counted"] == 6
    # One server is one shard: it serves every partition.
    (shard,) = doc["shards"]
    assert shard["address"].endswith(f":{cli_env.redis_url.rsplit(':', 1)[1]}")
    assert (shard["role"], shard["master"], shard["state"]) == ("master", None, "ok")
    assert shard["used_memory"] > 0 and shard["ops_per_sec"] >= 0
    assert shard["partitions"] == list(range(cli_env.partitions))

    code, doc, err = await status_json(capsys, "--max-lag", "0")
    assert code == status.THRESHOLD_EXIT
    assert err.splitlines() == [f"fraud status: lag 4 of stage router ({keys.raw}) exceeds --max-lag 0"]

    await run_burst(cli_env, "router")
    behind = sorted(by_partition(cli_env, [f"dev-{i}" for i in range(6, 10)]))
    code, doc, err = await status_json(capsys, "--max-lag", "3")
    assert code == status.THRESHOLD_EXIT
    assert err.splitlines() == [f"fraud status: lag 4 of stage detector (partitions {','.join(map(str, behind))}) "
                                "exceeds --max-lag 3"]


async def test_owners_and_members_are_judged_by_the_server_clock(
        cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """A lease is live while its `until` is ahead of the server's TIME; a member while its heartbeat is."""
    keys = Keys(cli_env.namespace)
    with redis.Redis.from_url(cli_env.redis_url, decode_responses=True) as client:
        now_ms = int(client.time()[0]) * 1000
        hour = 3_600_000
        client.hset(keys.partition(1).lease("detector"), mapping={"owner": "alive", "epoch": 4, "until": now_ms + hour})
        client.hset(keys.partition(2).lease("detector"), mapping={"owner": "gone", "epoch": 7, "until": now_ms - hour})
        client.hset(keys.lease("router"), mapping={"owner": "r1", "epoch": 1, "until": now_ms + hour})
        client.zadd(keys.members("detector"), {"alive": now_ms + hour, "gone": now_ms - hour})

    code, doc, err = await status_json(capsys)
    assert code == 0, err
    detector = doc["stages"]["detector"]
    leases = [u["lease"] for u in detector["units"]]
    assert leases[1] == {"owner": "alive", "epoch": 4, "until_ms": now_ms + hour, "live": True}
    assert leases[2] == {"owner": "gone", "epoch": 7, "until_ms": now_ms - hour, "live": False}
    assert all(lease["owner"] is None for p, lease in enumerate(leases) if p not in (1, 2))
    assert (detector["members"], detector["totals"]["owned"]) == (["alive"], 1)
    assert doc["stages"]["router"]["units"][0]["lease"]["live"]
    assert doc["stages"]["aggregator"]["members"] == []

    capsys.readouterr()
    assert await asyncio.to_thread(main, ["status", "--interval", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.split()[:2] == ["detector", "1"])
    assert "alive (epoch 4, " in row and "left)" in row
    assert "gone (epoch 7, ran out)" in next(line for line in lines if line.split()[:2] == ["detector", "2"])
    assert next(line for line in lines if line.split()[:2] == ["detector", "total"]).split()[2:5] == \
        ["1", "of", str(cli_env.partitions)]
    assert next(line for line in lines if line.startswith("detector ") and "alive" in line and
                len(line.split()) == 2).split() == ["detector", "alive"]


async def test_throughput_is_the_counters_delta_over_time(settings: Settings) -> None:
    keys = Keys(settings.namespace)
    xadd_all(settings, clicks(30))
    await run_burst(settings, "router")
    client = await open_redis(settings)
    try:
        before = await status.read_stats(client, keys)
        await asyncio.sleep(0.05)
        await run_burst(settings, "detector")
        snap = await status.snapshot(client, keys, before)
    finally:
        await client.aclose()
    rates = snap["throughput"]
    assert rates["over_s"] == pytest.approx((snap["taken_at_ms"] - before["taken_at_ms"]) / 1000)
    assert rates["over_s"] >= 0.05
    assert rates["clicks_per_s"]["detector"] * rates["over_s"] == pytest.approx(30)
    assert rates["clicks_per_s"]["router"] == rates["clicks_per_s"]["aggregator"] == 0


def null_lag_group(settings: Settings) -> list[str]:
    """Partition 0's detector group read 3 of 10 entries, then an unread entry deleted: Redis reports lag null."""
    stream = Keys(settings.namespace).partition(0).input
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        ids = [client.xadd(stream, dict(zip(click[::2], click[1::2], strict=True))) for click in clicks(10)]
        client.xgroup_create(stream, "detector", "0")
        client.xgroup_setid(stream, "detector", ids[2], entries_read=3)
        client.xdel(stream, ids[7])
        [group] = client.xinfo_groups(stream)
    assert group["lag"] is None and group["entries-read"] == 3
    return ids


async def test_null_lag_is_counted_and_marked_estimated(
        cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    ids = null_lag_group(cli_env)
    code, doc, err = await status_json(capsys, "--max-lag", "5")
    assert code == status.THRESHOLD_EXIT
    unit = doc["stages"]["detector"]["units"][0]
    # Entries 3..9 are unread and 7 was deleted: 6 left to read.
    assert (unit["lag"], unit["lag_estimated"], unit["pending"], unit["last_delivered_id"]) == (6, True, 0, ids[2])
    assert doc["stages"]["detector"]["totals"]["lag_estimated"]
    assert err.splitlines() == ["fraud status: lag 6 of stage detector (partitions 0) exceeds --max-lag 5"]


async def test_null_lag_of_a_long_stream_comes_from_the_counters(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    null_lag_group(settings)
    monkeypatch.setattr(status, "LAG_SCAN_LIMIT", 5)
    client = await open_redis(settings)
    try:
        snap = await status.snapshot(client, Keys(settings.namespace), partitions=settings.partitions)
    finally:
        await client.aclose()
    # entries-added 10 - entries-read 3: the deleted entry still counts, an upper bound.
    unit = snap["stages"]["detector"]["units"][0]
    assert (unit["lag"], unit["lag_estimated"]) == (7, True)


async def test_too_many_dead_letters_exit_3(cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    xadd_all(cli_env, [MISSING_DEVICE, MISSING_DEVICE, *clicks(1)])
    await run_pipeline(cli_env)
    code, doc, err = await status_json(capsys, "--max-dead", "1")
    assert (code, doc["dead_letters"]["reasons"]) == (status.THRESHOLD_EXIT, {"missing_field": 2})
    assert err.splitlines() == [
        f"fraud status: 2 dead letters in {cli_env.namespace}:{{*}}:dead exceed --max-dead 1"]
    code, _, err = await status_json(capsys, "--max-dead", "2")
    assert (code, err) == (0, "")


async def test_table_shows_streams_stages_and_dead_letters(
        cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    xadd_all(cli_env, [*clicks(3), MISSING_DEVICE])
    await run_burst(cli_env, "router")
    await run_burst(cli_env, "detector")
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["status", "--interval", "0.1"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    stream_row = next(line for line in lines if line.startswith(f"{cli_env.namespace}:raw "))
    assert stream_row.split()[1:3] == ["4", "4"]
    # STAGE PARTITION OWNER LENGTH PENDING LAG ...: the router has read everything; free since its burst left.
    router_row = next(line for line in lines if line.split()[:2] == ["router", "raw"])
    assert router_row.split()[2:6] == ["(free)", "4", "0", "0"]
    totals = [line.split() for line in lines if line.split()[:2] == ["detector", "total"]]
    assert totals == [["detector", "total", "0", "of", str(cli_env.partitions), "owned", "4", "0", "0", "-", "-"]]
    aggregator_total = next(line for line in lines if line.split()[:2] == ["aggregator", "total"])
    # Its group does not exist yet: it will read every verdict from the start, all of them its lag.
    assert aggregator_total.split()[6:9] == ["3", "0", "3"]
    assert any(line.split() == ["1", "missing_field"] for line in lines)
    assert any(line.startswith("THROUGHPUT over 0.1") for line in lines)
    shard_header = lines.index(next(line for line in lines if line.startswith("SHARD ")))
    assert lines[shard_header].split() == ["SHARD", "ROLE", "STATE", "MEMORY", "OPS/S", "PARTITIONS"]
    assert lines[shard_header + 1].split()[1:3] == ["master", "ok"]
    assert lines[shard_header + 1].split()[-1] == ",".join(map(str, range(cli_env.partitions)))


def test_unreachable_redis_is_one_line_and_exit_1(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FRAUD_REDIS_URL", f"redis://127.0.0.1:{free_port()}")
    assert main(["status", "--interval", "0"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith("fraud: error: cannot reach Redis at redis://127.0.0.1:")


@pytest.mark.parametrize("argv", [["--max-lag", "-1"], ["--max-dead", "many"], ["--watch", "0"],
                                  ["--interval", "nan"]])
def test_bad_arguments_are_one_line_and_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["status", *argv])
    assert exit_info.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("fraud status: error: argument")


def test_watch_repeats_plain_blocks_until_interrupted(settings: Settings) -> None:
    xadd_all(settings, clicks(2))
    env = {**os.environ, "FRAUD_REDIS_URL": settings.redis_url, "FRAUD_LOG_FORMAT": "json"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "status", "--watch", "0.2", "--interval", "0"],
                            cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        headers = 0
        deadline = time.monotonic() + 30
        while headers < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            headers += line.startswith("fraud status ")
        assert headers == 2
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    # Not a terminal: no screen-clearing escapes, just one block after another.
    assert "\x1b[" not in out
