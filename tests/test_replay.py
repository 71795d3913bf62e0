"""`fraud generate` and `fraud replay FILE` against a live server."""

from __future__ import annotations

import argparse
import io
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
import redis

from pipeline.cli.main import build_parser, main
from pipeline.cli.positions import id_before_time, position
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.ops.progress import Progress
from pipeline.ops.replay_file import bad_line_partition
from tests.helpers import stream_entries


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


async def run(settings: Settings, *argv: str) -> int:
    args = parse(*argv)
    return int(await args.run(args, settings) or 0)


def generate(out: Path, *extra: str) -> None:
    assert main(["generate", "--out", str(out), "--start-ms", "1700000000000", *extra]) == 0


def raw_fields(settings: Settings) -> list[dict[str, str]]:
    return [fields for _, fields in stream_entries(settings, Keys(settings.namespace).raw)]


def test_generate_is_deterministic_and_labelled(tmp_path: Path) -> None:
    for name in ("a", "b"):
        generate(tmp_path / f"{name}.jsonl", "--clicks", "500", "--seed", "7")
        generate(tmp_path / f"{name}.csv", "--clicks", "500", "--seed", "7", "--format", "csv")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    generate(tmp_path / "c.jsonl", "--clicks", "500", "--seed", "8")
    assert (tmp_path / "c.jsonl").read_bytes() != (tmp_path / "a.jsonl").read_bytes()

    lines = [orjson.loads(line) for line in (tmp_path / "a.jsonl").read_bytes().splitlines()]
    assert len(lines) == 500
    labels = Counter(line["label"] for line in lines)
    assert {"human", "blacklisted", "bot_burst"} <= set(labels)
    # Event time starts where asked and moves on (10 ms per click on average at the default rate).
    times = [int(line["ts"]) for line in lines if line.get("ts", "").isdigit()]
    assert times[0] == 1_700_000_000_000
    assert 1_700_000_000_000 + 2_000 < max(times) < 1_700_000_000_000 + 20_000

    csv_lines = (tmp_path / "a.csv").read_text().splitlines()
    assert csv_lines[0].split(",")[:5] == ["device_id", "ip", "transaction_id", "ts", "label"]
    assert len(csv_lines) == 501


async def test_replay_jsonl_and_csv_send_exact_fields_without_label(settings: Settings, tmp_path: Path) -> None:
    jsonl = tmp_path / "t.jsonl"
    generate(jsonl, "--clicks", "300", "--seed", "3")
    expected = [{k: v for k, v in orjson.loads(line).items() if k != "label"}
                for line in jsonl.read_bytes().splitlines()]
    assert await run(settings, "replay", str(jsonl)) == 0
    assert raw_fields(settings) == expected

    with redis.Redis.from_url(settings.redis_url) as client:
        client.delete(Keys(settings.namespace).raw)
    csv_file = tmp_path / "t.csv"
    generate(csv_file, "--clicks", "300", "--seed", "3", "--format", "csv")
    assert await run(settings, "replay", str(csv_file)) == 0
    # CSV carries no empty value: an empty cell is an absent field.
    assert raw_fields(settings) == [{k: v for k, v in e.items() if v != ""} for e in expected]
    assert all(set(fields) - {"label"} == set(fields) for fields in raw_fields(settings))


async def test_replay_numbers_and_csv_extra_columns(settings: Settings, tmp_path: Path) -> None:
    trace = tmp_path / "odd.data"
    trace.write_text('{"device_id": "d1", "ip": "10.0.0.1", "ts": 1000, "score": 1.5, "label": "human"}\n')
    assert await run(settings, "replay", str(trace)) == 0
    csv_file = tmp_path / "x.csv"
    csv_file.write_text('ip,device_id,label,note\n10.0.0.2,d2,bot,"a, b"\n10.0.0.3,,human,\n')
    assert await run(settings, "replay", str(csv_file)) == 0
    assert raw_fields(settings) == [
        {"device_id": "d1", "ip": "10.0.0.1", "ts": "1000", "score": "1.5"},
        {"ip": "10.0.0.2", "device_id": "d2", "note": "a, b"},
        {"ip": "10.0.0.3"},
    ]


async def test_bad_lines_are_reported_and_dead_lettered(settings: Settings, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "bad.jsonl"
    trace.write_text("\n".join([
        '{"device_id": "d1", "ip": "10.0.0.1", "ts": "1000"}',
        "not json at all",
        '["a", "list"]',
        '{"device_id": "d2", "ip": "10.0.0.2", "nested": {"a": 1}}',
        "",
        '{"device_id": "d3", "ip": "300.1.1.1"}',
        '{"device_id": null, "ip": "10.0.0.4"}',
        '{"ip": "10.0.0.5", "ts": "2000"}',
    ]) + "\n")
    assert await run(settings, "replay", str(trace)) == 0
    out = capsys.readouterr()
    assert "sent 3 clicks, 4 bad lines" in out.out
    for number in (2, 3, 4, 7):
        assert f"line {number}:" in out.err
    # Semantically invalid clicks (a bad ip, no device_id) go through: the detector judges them.
    assert [f.get("device_id") for f in raw_fields(settings)] == ["d1", "d3", None]
    # A bad line has no device: it is dead-lettered where a click without one would be.
    bad_lines = bad_line_partition(Keys(settings.namespace), settings)
    dead = stream_entries(settings, bad_lines.dead)
    assert [fields["reason"].split(":")[0:2] for _, fields in dead] == [["bad_line", " line 2"],
                                                                        ["bad_line", " line 3"],
                                                                        ["bad_line", " line 4"],
                                                                        ["bad_line", " line 7"]]
    first = dead[0][1]
    assert first == {"reason": first["reason"], "stage": "replay", "raw_id": "",
                     "line": "not json at all"}
    assert "not JSON" in first["reason"]
    assert dead[2][1]["line"] == '{"device_id": "d2", "ip": "10.0.0.2", "nested": {"a": 1}}'
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        assert client.hget(bad_lines.stats, "replay.dead") == "4"


async def test_csv_wrong_column_count_is_a_bad_line(settings: Settings, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("device_id,ip,ts\nd1,10.0.0.1,5\nd2,10.0.0.2\nd3,10.0.0.3,7,extra\nd4,10.0.0.4,8\n")
    assert await run(settings, "replay", str(trace)) == 0
    assert [f["device_id"] for f in raw_fields(settings)] == ["d1", "d4"]
    dead = bad_line_partition(Keys(settings.namespace), settings).dead
    reasons = [fields["reason"] for _, fields in stream_entries(settings, dead)]
    assert reasons == ["bad_line: line 3: expected 3 columns, got 2", "bad_line: line 4: expected 3 columns, got 4"]
    assert "line 3: expected 3 columns" in capsys.readouterr().err


async def test_pacing_follows_event_time(settings: Settings, tmp_path: Path) -> None:
    trace = tmp_path / "paced.jsonl"
    trace.write_text("".join(f'{{"device_id": "d", "ip": "10.0.0.1", "ts": "{ts}"}}\n' for ts in (0, 1000, 2000)))
    started = time.monotonic()
    assert await run(settings, "replay", str(trace), "--speed", "4") == 0
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 2.0
    assert len(raw_fields(settings)) == 3
    with redis.Redis.from_url(settings.redis_url) as client:
        ids = [entry_id for entry_id, _ in client.xrange(Keys(settings.namespace).raw)]
    # The clicks arrived spread out in time, not in one burst.
    first_ms, last_ms = int(ids[0].split(b"-")[0]), int(ids[-1].split(b"-")[0])
    assert last_ms - first_ms >= 400


def test_missing_file_and_bad_arguments(monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FRAUD_REDIS_URL", redis_url)
    assert main(["replay", str(tmp_path / "missing.jsonl")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err
    for argv in (["replay", "x", "--speed", "0"], ["replay", "x", "--speed", "-1"],
                 ["group", "reset", "--stream", "bogus", "--group", "g", "--to-latest"],
                 ["replay", "--from-stream"], ["replay", "x", "--from-stream", "--name", "n"],
                 ["replay", "--from-stream", "--name", "n", "--start", "yesterday"],
                 ["generate", "--out", str(tmp_path / "o"), "--clicks", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error:" in err, argv


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_one_line_on_a_terminal_and_logs_lines_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pipeline.ops.progress.TTY_INTERVAL_S", 0.0)
    screen = FakeTerminal()
    bar = Progress(200, out=screen)
    bar.update(50)
    bar.note("line 7: not JSON")
    bar.update(100)
    bar.finish()
    text = screen.getvalue()
    assert text.startswith("\r[######") and "50/200 lines" in text and "ETA" in text
    # The note gets a line of its own; the bar is redrawn after it, then cleared for the summary.
    assert "\r\x1b[Kline 7: not JSON\n\r[############" in text and "100/200 lines" in text
    assert text.endswith("\r\x1b[K") and "\n" not in text.split("not JSON\n")[1]

    monkeypatch.setattr("pipeline.ops.progress.LOG_INTERVAL_S", 0.0)
    log = io.StringIO()
    plain = Progress(4, out=log)
    plain.update(2)
    assert log.getvalue().startswith("progress: 50% 2/4 lines") and "\r" not in log.getvalue()


def test_times_and_ids_on_the_command_line() -> None:
    assert position("2023-11-14T22:13:20Z").as_start() == "1700000000000-0"
    assert position("2023-11-14T22:13:20").as_end() == f"1700000000000-{2**64 - 1}"
    assert position("1700000000000").as_start() == "1700000000000-0"
    assert position("5-3").as_end() == "5-3"
    assert id_before_time(2000) == f"1999-{2**64 - 1}" and id_before_time(0) == "0-0"
