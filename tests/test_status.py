"""`fraud status` against a live server: the snapshot's figures, its lag estimate, exit codes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any

import orjson
import pytest
import redis

from pipeline.cli.main import main
from pipeline.client.connection import open_redis
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.ops import status
from tests.conftest import PROJECT_ROOT, free_port
from tests.helpers import run_burst, xadd_all


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


async def test_before_anything_ran_reports_absent_streams_and_exits_0(
        cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, err = await status_json(capsys, "--max-lag", "0", "--max-pending", "0", "--max-dead", "0")
    assert code == 0, err
    assert err == ""
    keys = Keys(cli_env.namespace)
    assert {name: (s["key"], s["exists"], s["length"]) for name, s in doc["streams"].items()} == {
        "raw": (keys.raw, False, 0), "verdicts": (keys.verdicts, False, 0), "dead": (keys.dead, False, 0)}
    assert doc["groups"] == {}
    assert doc["dead_letters"] == {"count": 0, "sampled": 0, "reasons": {}}
    assert doc["stats"] == {}
    assert doc["throughput"] is None


async def test_lag_and_pending_follow_a_real_run(cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    first = xadd_all(cli_env, [*clicks(6), MISSING_DEVICE])
    await run_burst(cli_env, "detector")
    later = xadd_all(cli_env, clicks(4, first=6))

    code, doc, err = await status_json(capsys)
    assert code == 0, err
    raw, verdicts, dead = (doc["streams"][name] for name in ("raw", "verdicts", "dead"))
    assert (raw["length"], raw["entries_added"], raw["first_id"], raw["last_id"]) == (11, 11, first[0], later[-1])
    assert raw["first_time_ms"] == int(first[0].split("-")[0])
    assert raw["memory_bytes"] > 0
    assert (verdicts["length"], dead["length"]) == (6, 1)
    # The aggregator never ran: its group does not exist yet.
    assert set(doc["groups"]) == {"detector"}
    detector = doc["groups"]["detector"]
    assert {k: detector[k] for k in ("stream", "consumers", "pending", "lag", "lag_estimated",
                                     "last_delivered_id", "entries_read")} == {
        "stream": raw["key"], "consumers": 1, "pending": 0, "lag": 4, "lag_estimated": False,
        "last_delivered_id": first[-1], "entries_read": 7}
    assert [(m["name"], m["pending"]) for m in detector["members"]] == [("test", 0)]
    assert detector["members"][0]["idle_ms"] >= 0
    assert doc["dead_letters"] == {"count": 1, "sampled": 1, "reasons": {"missing_field": 1}}
    assert sum(n for name, n in doc["stats"].items() if name.startswith("detector.")) == 7

    code, doc, err = await status_json(capsys, "--max-lag", "0")
    assert code == status.THRESHOLD_EXIT
    assert err.splitlines() == [f"fraud status: lag 4 of group detector on {raw['key']} exceeds --max-lag 0"]

    await run_burst(cli_env, "detector")
    await run_burst(cli_env, "aggregator")
    code, doc, err = await status_json(capsys, "--max-lag", "0", "--max-pending", "0")
    assert code == 0, err
    assert {name: (g["lag"], g["pending"], g["entries_read"]) for name, g in doc["groups"].items()} == {
        "detector": (0, 0, 11), "aggregator": (0, 0, 10)}
    assert doc["stats"]["aggregator.counted"] == 10


async def test_throughput_is_the_counters_delta_over_time(settings: Settings) -> None:
    keys = Keys(settings.namespace)
    xadd_all(settings, clicks(30))
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
    assert rates["clicks_per_s"]["aggregator"] == 0


def null_lag_group(settings: Settings) -> list[str]:
    """A detector group that read 3 of 10 entries, then an unread entry deleted: Redis reports lag null."""
    keys = Keys(settings.namespace)
    ids = xadd_all(settings, clicks(10))
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        client.xgroup_create(keys.raw, "detector", "0")
        client.xreadgroup("detector", "c1", {keys.raw: ">"}, count=3)
        client.xdel(keys.raw, ids[7])
        [group] = client.xinfo_groups(keys.raw)
    assert group["lag"] is None and group["entries-read"] == 3
    return ids


async def test_null_lag_is_counted_and_marked_estimated(
        cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    ids = null_lag_group(cli_env)
    code, doc, err = await status_json(capsys, "--max-pending", "2")
    assert code == status.THRESHOLD_EXIT
    group = doc["groups"]["detector"]
    # Entries 3..9 are unread and 7 was deleted: 6 left to read.
    assert (group["lag"], group["lag_estimated"], group["pending"], group["last_delivered_id"]) == (6, True, 3, ids[2])
    assert [(m["name"], m["pending"]) for m in group["members"]] == [("c1", 3)]
    assert err.splitlines() == [
        f"fraud status: pending 3 of group detector on {cli_env.namespace}:raw exceeds --max-pending 2"]


async def test_null_lag_of_a_long_stream_comes_from_the_counters(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    null_lag_group(settings)
    monkeypatch.setattr(status, "LAG_SCAN_LIMIT", 5)
    client = await open_redis(settings)
    try:
        snap = await status.snapshot(client, Keys(settings.namespace))
    finally:
        await client.aclose()
    # entries-added 10 - entries-read 3: the deleted entry still counts, an upper bound.
    assert (snap["groups"]["detector"]["lag"], snap["groups"]["detector"]["lag_estimated"]) == (7, True)


async def test_too_many_dead_letters_exit_3(cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    xadd_all(cli_env, [MISSING_DEVICE, MISSING_DEVICE, *clicks(1)])
    await run_burst(cli_env, "detector")
    code, doc, err = await status_json(capsys, "--max-dead", "1")
    assert (code, doc["dead_letters"]["reasons"]) == (status.THRESHOLD_EXIT, {"missing_field": 2})
    assert err.splitlines() == [f"fraud status: 2 dead letters in {cli_env.namespace}:dead exceed --max-dead 1"]
    code, _, err = await status_json(capsys, "--max-dead", "2")
    assert (code, err) == (0, "")


async def test_table_shows_streams_groups_and_dead_letters(
        cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    xadd_all(cli_env, [*clicks(3), MISSING_DEVICE])
    await run_burst(cli_env, "detector")
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["status", "--interval", "0.1"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    stream_row = next(line for line in lines if line.startswith(f"{cli_env.namespace}:raw "))
    assert stream_row.split()[1:3] == ["4", "4"]
    group_row = next(line for line in lines if line.startswith("detector "))
    assert group_row.split()[1:5] == [f"{cli_env.namespace}:raw", "1", "0", "0"]
    assert any(line.split() == ["1", "missing_field"] for line in lines)
    assert any(line.startswith("THROUGHPUT over 0.1") for line in lines)


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
