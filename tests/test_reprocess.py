"""`fraud replay --from-stream` / `--drop` and `fraud group reset` against a live server."""

from __future__ import annotations

import argparse
import dataclasses
from collections import Counter
from typing import Any

import pytest
import redis

from pipeline.cli.main import build_parser
from pipeline.core.errors import FraudError
from pipeline.core.keys import VERDICTS, Keys
from pipeline.core.partitions import partition_of
from pipeline.core.settings import Settings
from tests.arrival import xadd_at_event_time
from tests.helpers import list_ips, run_pipeline, series_totals, verdicts_by_raw_id, xadd_all
from tests.partition_audit import model_for

BASE_MS = 1_700_000_000_000


async def run(settings: Settings, *argv: str) -> int:
    args: argparse.Namespace = build_parser().parse_args(list(argv))
    return int(await args.run(args, settings) or 0)


def snapshot(settings: Settings, prefix: str) -> dict[bytes, Any]:
    """DUMP of every key under a prefix: any change to any of them changes this."""
    with redis.Redis.from_url(settings.redis_url) as client:
        return {key: client.dump(key) for key in sorted(client.scan_iter(match=prefix + "*"))}


def click(device: str, ip: str, ts: int, tx: str | None = None) -> list[str]:
    fields = ["device_id", device, "ip", ip, "ts", str(BASE_MS + ts)]
    return [*fields, "transaction_id", tx] if tx else fields


async def test_range_reprocessing_uses_current_rules_and_leaves_live_keys_alone(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    keys = Keys(settings.namespace)
    await list_ips(settings, ["192.0.2.66"])
    ids = xadd_at_event_time(settings, [
        click("a", "10.1.1.1", 0, "t1"),
        click("b", "198.51.100.9", 100, "t2"),       # clean live, blacklisted later
        click("c", "192.0.2.66", 200, "t3"),         # blacklisted all along
        click("d", "198.51.100.9", 300, "t4"),       # clean live, blacklisted later
        click("e", "10.1.1.2", 400),
        ["ip", "10.0.0.1"],                          # dead-lettered: no device_id
        click("f", "10.1.1.3", 500, "t6"),           # outside the range below
    ])
    await run_pipeline(settings)
    live_before = verdicts_by_raw_id(settings)
    assert Counter(live_before.values()) == {"clean": 5, "ip_blacklist": 1}

    # The rules change: an address some clean clicks used is now known bad.
    await list_ips(settings, ["198.51.100.9"])
    live_keys = snapshot(settings, "clicks:")
    assert await run(settings, "replay", "--from-stream", "--name", "whatif",
                     "--start", ids[0], "--end", ids[5]) == 0
    captured = capsys.readouterr()
    report = captured.out
    # The replay's agents ran cleanly (no step refused by the server, e.g. an invalid trim bound).
    assert "refused" not in captured.out + captured.err

    replay = keys.replay("whatif")
    aside = dataclasses.replace(settings, namespace=replay.namespace)
    replayed = verdicts_by_raw_id(aside)
    assert set(replayed) == set(ids[:5])
    assert replayed == {**{i: live_before[i] for i in ids[:5]}, ids[1]: "ip_blacklist", ids[3]: "ip_blacklist"}
    assert series_totals(aside) == dict.fromkeys(VERDICTS, 0) | {"clean": 2, "ip_blacklist": 3}
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        # The replay raw stream holds the same ids as the live range.
        assert [i for i, _ in client.xrange(replay.raw)] == ids[:6]
        # The click without a device was judged in partition 0, as it is live.
        assert client.xrange(replay.partition(partition_of(b"", settings.partitions)).dead)[0][1]["raw_id"] == ids[5]

    # Live keys: not one byte changed (live keys under a replay prefix excluded: there were none).
    after = {k: v for k, v in snapshot(settings, "clicks:").items() if not k.startswith(b"clicks:replay:")}
    assert after == {k: v for k, v in live_keys.items() if not k.startswith(b"clicks:replay:")}
    assert verdicts_by_raw_id(settings) == live_before

    assert "changed: 2 of 6" in report
    assert "clean -> ip_blacklist: 2" in report
    assert "replay series sums: clean 2, ip_blacklist 3, click_spam 0" in report

    # The same name twice is refused rather than mixed.
    with pytest.raises(FraudError, match="exists"):
        await run(settings, "replay", "--from-stream", "--name", "whatif")

    assert await run(settings, "replay", "--drop", "--name", "whatif") == 0
    assert "dropped replay 'whatif'" in capsys.readouterr().out
    assert snapshot(settings, replay.namespace) == {}
    assert snapshot(settings, "clicks:") == after


async def test_range_by_time_and_empty_range(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    ids = xadd_all(settings, [click("a", "10.1.1.1", 0, "t1"), click("b", "10.1.1.2", 5, "t2")])
    await run_pipeline(settings)
    first_ms = int(ids[0].split("-")[0])
    assert await run(settings, "replay", "--from-stream", "--name", "t", "--start", str(first_ms),
                     "--end", str(first_ms + 60_000)) == 0
    assert "changed: 0 of 2" in capsys.readouterr().out
    with pytest.raises(FraudError, match="holds no entries"):
        await run(settings, "replay", "--from-stream", "--name", "u", "--start", "2001-01-01T00:00:00Z",
                  "--end", "2001-01-02T00:00:00Z")


async def test_a_changed_threshold_shows_how_many_verdicts_it_moves(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """What-if for a rule's tuning: bots a little less even than the robotic threshold are clean live;
    with FRAUD_ROBOTIC_SPREAD_PERMILLE doubled, the replay moves exactly the clicks the sequential
    model moves, and the report says how many, per verdict."""
    # Intervals 6000 and 6100 ms by turns: spread 100 of a mean of ~6050, 1.65 % (robotic at 2 %); and
    # 6000 and 6200: 3.3 %, robotic only at 4 %.
    steady = [sum((6_000, 6_100)[k % 2] for k in range(n)) for n in range(10)]
    loose = [sum((6_000, 6_200)[k % 2] for k in range(n)) for n in range(10)]
    clicks = [click("steady", "10.1.1.1", t) for t in steady] + [click("loose", "10.1.1.2", t) for t in loose]
    ids = xadd_at_event_time(settings, sorted(clicks, key=lambda c: int(c[5])))
    await run_pipeline(settings)
    assert Counter(verdicts_by_raw_id(settings).values()) == {"clean": 15, "robotic": 5}

    looser = dataclasses.replace(settings, robotic_spread_permille=40)
    assert await run(looser, "replay", "--from-stream", "--name", "looser", "--start", ids[0], "--end", ids[-1]) == 0
    report = capsys.readouterr().out
    expected = Counter()
    for rules in (settings, looser):
        model = model_for(rules, [])
        expected[rules.robotic_spread_permille] = sum(
            model.outcome(i, [f.encode() for f in fields]) == "robotic"
            for i, fields in zip(ids, sorted(clicks, key=lambda c: int(c[5])), strict=True))
    moved = expected[40] - expected[20]
    assert moved == 5
    assert f"changed: {moved} of {len(clicks)}" in report
    assert f"  clean -> robotic: {moved}" in report
    assert any(line.split() == ["robotic", "5", "10"] for line in report.splitlines()), report
