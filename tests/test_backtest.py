"""`fraud backtest`: a labelled log judged at its own event time, aside, and its confusion matrix
checked against an independent count (tests/rule_model.py on the rows themselves)."""

from __future__ import annotations

import calendar
import ipaddress
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
import redis

from pipeline.core.keys import VERDICTS, Keys
from pipeline.core.settings import Settings
from pipeline.ops.sample_log import sample_rows, write_sample
from tests.rule_model import RuleModel
from tests.test_replay import run

ROWS = 6_000
MAPPING = ('device_id = ["ip", "device", "os"]\nip = "ip"\nts = "click_time"\n'
           'ts_format = "%Y-%m-%d %H:%M:%S"\npass = ["app", "channel"]\n'
           'label = "is_attributed"\nfraud_values = ["0"]\n')


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "sample.csv.gz"
    write_sample(path, seed=3, rows=ROWS)
    (tmp_path / "talkingdata.toml").write_text(MAPPING)
    return path


def expected_outcomes(threshold: int, blacklist: frozenset[ipaddress.IPv4Address]) -> Counter[tuple[str, bool]]:
    """The rows judged one by one by the independent model, each arriving at its own click time."""
    model = RuleModel(threshold=threshold, blacklist=blacklist)
    counts: Counter[tuple[str, bool]] = Counter()
    arrival = 0
    for number, row in enumerate(sample_rows(3, ROWS)):
        ip, _, device, os, _, click_time, _, attributed = row
        ts = calendar.timegm(time.strptime(click_time, "%Y-%m-%d %H:%M:%S")) * 1000
        arrival = max(arrival, ts)
        verdict = model.click(arrival, f"{ip}:{device}:{os}", f"row {number}", ts,
                              ipaddress.IPv4Address(int(ip)))
        counts[verdict, attributed == "0"] += 1
    return counts


def printed(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The command's own lines: the agents' log lines (unconfigured structlog, in tests) left out."""
    return [line for line in capsys.readouterr().out.splitlines() if not line[:4].isdigit()]


def as_counter(report: dict) -> Counter[tuple[str, bool]]:
    return Counter({(o, fraud): n for o, cells in report["outcomes"].items()
                    for fraud, n in ((True, cells["fraud"]), (False, cells["not_fraud"])) if n})


# "ts": verdict entries without the label's field unless the backtest keeps it copied.
@pytest.mark.parametrize("verdict_fields", ["all", "ts"])
async def test_matrix_matches_an_independent_count(settings: Settings, log: Path, verdict_fields: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    settings = replace(settings, verdict_fields=verdict_fields)
    # One busy bot's address on the live blacklist: its clicks become ip_blacklist in the backtest too.
    bot_ip = Counter(row[0] for row in sample_rows(3, ROWS)).most_common(1)[0][0]
    listed = ipaddress.IPv4Address(int(bot_ip))
    assert await run(settings, "blacklist", "add", str(listed)) == 0
    capsys.readouterr()
    mapping = str(log.parent / "talkingdata.toml")
    assert await run(settings, "backtest", str(log), "--mapping", mapping, "--json") == 0
    report = orjson.loads(printed(capsys)[-1])
    expected = expected_outcomes(2, frozenset({listed}))
    assert as_counter(report) == expected
    assert report["sent"] == ROWS and report["bad_lines"] == 0
    for verdict in ("ip_blacklist", "click_spam"):
        matrix = report["confusion"][verdict]
        fraud_judged = sum(n for (v, f), n in expected.items() if f and v in VERDICTS)
        assert matrix["tp"] == expected[verdict, True] > 0
        assert matrix["fp"] == expected[verdict, False]
        assert matrix["tp"] + matrix["fn"] == fraud_judged
    flagged = report["confusion"]["flagged"]
    tp = expected["ip_blacklist", True] + expected["click_spam", True]
    fp = expected["ip_blacklist", False] + expected["click_spam", False]
    assert (flagged["tp"], flagged["fp"]) == (tp, fp)
    assert flagged["precision"] == pytest.approx(tp / (tp + fp))
    # The key space is gone, the live streams untouched.
    with redis.Redis.from_url(settings.redis_url) as client:
        assert client.keys(Keys(settings.namespace).replay("backtest").namespace + ":*") == []
        assert client.exists(Keys(settings.namespace).raw) == 0


async def test_sweep_gives_one_row_per_setting(settings: Settings, log: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    mapping = str(log.parent / "talkingdata.toml")
    assert await run(settings, "backtest", str(log), "--mapping", mapping, "--sweep", "threshold=1,3") == 0
    lines = printed(capsys)
    assert lines[0].split()[:3] == ["setting", "flagged", "TP"]
    for line, threshold in zip(lines[1:], (1, 3), strict=True):
        expected = expected_outcomes(threshold, frozenset())
        cells = line.split()
        assert cells[0] == f"threshold={threshold}"
        assert int(cells[2]) == expected["click_spam", True]
        assert int(cells[3]) == expected["click_spam", False]
    assert len(lines) == 3


async def test_rows_out_of_order_arrive_late(settings: Settings, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A row older than one before it arrives at that newer time: within the horizon it is judged,
    beyond it dead-lettered ts_too_old, as it would be live."""
    log = tmp_path / "late.csv"
    log.write_text("ip,device,os,ts,label\n"
                   "1,1,1,1000000,bot\n2,1,1,2000000,ok\n3,1,1,1999900,bot\n4,1,1,1000000,bot\n5,1,1,x,ok\n")
    assert await run(settings, "backtest", str(log), "--device-id", "ip,device,os", "--ip", "ip",
                     "--ts", "ts", "--ts-format", "epoch_s", "--label", "label", "--fraud-value", "bot",
                     "--json", "--keep", "--name", "late") == 0
    report = orjson.loads(printed(capsys)[-1])
    assert report["outcomes"]["clean"] == {"fraud": 2, "not_fraud": 1}
    assert report["outcomes"]["dead"] == {"fraud": 1, "not_fraud": 0}
    assert report["bad_lines"] == 1
    keys = Keys(settings.namespace).replay("late")
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        ids = [entry_id for entry_id, _ in client.xrange(keys.raw)]
        assert [i.split("-")[0] for i in ids] == ["1000000000", "2000000000", "2000000000", "2000000000"]
        (dead,) = [f for part in keys.partitions(settings.partitions) for _, f in client.xrange(part.dead)
                   if f["stage"] == "detector"]
        assert dead["reason"].startswith("ts_too_old")
    assert await run(settings, "replay", "--drop", "--name", "late") == 0


async def test_fraud_if_empty_on_the_command_line_overrides_the_file(settings: Settings, log: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    mapping = str(log.parent / "talkingdata.toml")
    assert await run(settings, "backtest", str(log), "--mapping", mapping, "--json",
                     "--label", "attributed_time", "--fraud-if-empty") == 0
    # In the sample an empty attributed_time and is_attributed 0 are the same clicks.
    assert as_counter(orjson.loads(printed(capsys)[-1])) == expected_outcomes(2, frozenset())
