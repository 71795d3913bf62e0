"""Bytes that are not UTF-8, anywhere a reading tool looks (the first and last entries of the raw and
dead-letter streams, field names, values, a dead letter's reason, a member's and a lease owner's
name): `fraud status`, its JSON, its thresholds, the monitor and the live view show them
backslash-escaped and never crash."""

from __future__ import annotations

import asyncio
import io

import pytest
import redis

from pipeline.cli.main import main
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.ops.live_view import LiveView
from pipeline.ops.status import THRESHOLD_EXIT, open_status_client
from tests.test_monitor import last_value, monitor_once
from tests.test_status import clicks, status_json

BAD = b"\xff\xfe\x80"
# Dead letters as the detector writes them (reason, stage, raw_id, then the original fields),
# with undecodable bytes in the reason and in the fields beside it.
DEAD_LETTERS = [
    [b"reason", b"undecodable: " + BAD, b"stage", b"detector", b"raw_id", b"1-1",
     b"device" + BAD, b"ip" + BAD],
    [b"reason", b"invalid_field: ip", b"stage", b"detector", b"raw_id", b"1-2",
     b"ip", BAD, BAD, b"x"],
    [b"reason", b"missing_field: device_id", b"stage", b"detector", b"raw_id", b"1-3",
     BAD + b"name", BAD + b"value"],
]


@pytest.fixture
def undecodable(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Raw and dead-letter streams whose first and last entries hold undecodable bytes; a member and a
    lease owner named so."""
    monkeypatch.setenv("FRAUD_REDIS_URL", settings.redis_url)
    keys = Keys(settings.namespace)
    with redis.Redis.from_url(settings.redis_url) as client:
        client.execute_command("XADD", keys.raw, "*", b"device_id", BAD, b"ip" + BAD, b"198.51.100.7")
        for click in clicks(2):
            client.execute_command("XADD", keys.raw, "*", *click)
        client.execute_command("XADD", keys.raw, "*", BAD, BAD, b"ts", b"1000")
        for fields in DEAD_LETTERS:
            client.execute_command("XADD", keys.partition(2).dead, "*", *fields)
        client.hset(keys.config, "partitions", settings.partitions)
        until = int(client.time()[0]) * 1000 + 3_600_000
        client.zadd(keys.members("detector"), {b"member-" + BAD: until})
        client.hset(keys.partition(1).lease("detector"),
                    mapping={"owner": b"member-" + BAD, "epoch": 1, "until": until})
    return settings


async def test_status_json_and_thresholds_show_undecodable_bytes_escaped(
        undecodable: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, err = await status_json(capsys)
    assert (code, err) == (0, "")
    assert doc["streams"]["raw"]["length"] == 4
    assert doc["dead_letters"]["reasons"] == {"undecodable": 1, "invalid_field": 1, "missing_field": 1}
    assert doc["stages"]["detector"]["members"] == ["member-\\xff\\xfe\\x80"]
    assert doc["stages"]["detector"]["units"][1]["lease"]["owner"] == "member-\\xff\\xfe\\x80"

    code, _, err = await status_json(capsys, "--max-dead", "2")
    assert code == THRESHOLD_EXIT
    assert err.splitlines() == [
        f"fraud status: 3 dead letters in {undecodable.namespace}:{{*}}:dead exceed --max-dead 2"]


async def test_status_table_shows_undecodable_bytes_escaped(
        undecodable: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["status", "--interval", "0"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert any(line.split()[:3] == ["detector", "1", "member-\\xff\\xfe\\x80"] for line in out.splitlines())
    assert any(line.split() == ["detector", "member-\\xff\\xfe\\x80"] for line in out.splitlines())
    assert any(line.split() == ["1", "undecodable"] for line in out.splitlines())


async def test_monitor_records_a_tick_over_undecodable_bytes(undecodable: Settings) -> None:
    assert await monitor_once(undecodable) == 0
    with redis.Redis.from_url(undecodable.redis_url) as client:
        assert last_value(client, Keys(undecodable.namespace).health_series("dead_letters", "dead")) == 3


async def test_live_view_draws_over_undecodable_bytes(undecodable: Settings) -> None:
    client = await open_status_client(undecodable)
    out = io.StringIO()
    try:
        view = LiveView(client, Keys(undecodable.namespace), out=out)
        await view.refresh()
        await view.refresh()
    finally:
        await client.aclose()
    # The first refresh has no rates yet and draws nothing.
    [line] = out.getvalue().splitlines()
    assert "clicks in   4 " in line and "dead letters 3" in line
