"""Bringing one's own log to `fraud replay`: the TalkingData layout mapped, compressed and quoted
input read as streams, and a million rows replayed in memory that does not grow with the file."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import redis

from pipeline.core.errors import FraudError
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.ops.mapping import mapping_from
from pipeline.ops.replay_file import bad_line_partition, replay_file
from pipeline.ops.sample_log import HEADER, write_sample
from tests.helpers import run_pipeline, stream_entries
from tests.test_replay import raw_fields, run

TALKINGDATA = {"device_id": ["ip", "device", "os"], "ip": "ip", "ts": "click_time",
               "ts_format": "%Y-%m-%d %H:%M:%S", "pass": ["app", "channel"]}


def test_sample_log_is_deterministic_in_every_container(tmp_path: Path) -> None:
    for name in ("a.csv", "b.csv", "a.csv.gz", "b.csv.gz", "a.zip", "b.zip"):
        write_sample(tmp_path / name, seed=5, rows=2_000)
    plain = (tmp_path / "a.csv").read_bytes()
    assert plain == (tmp_path / "b.csv").read_bytes()
    assert (tmp_path / "a.csv.gz").read_bytes() == (tmp_path / "b.csv.gz").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        assert archive.namelist() == ["a.csv"]
        assert archive.read("a.csv") == plain
    assert gzip.decompress((tmp_path / "a.csv.gz").read_bytes()) == plain
    lines = plain.decode().splitlines()
    assert lines[0] == ",".join(HEADER) and len(lines) == 2_001
    times = [line.split(",")[5] for line in lines[1:]]
    assert times == sorted(times)


async def test_ten_talkingdata_rows_replayed_with_a_mapping_are_all_judged(
        settings: Settings, tmp_path: Path) -> None:
    """The issue's first try: ten rows that used to be ten `missing_field: device_id` dead letters."""
    log = tmp_path / "ten.csv"
    write_sample(log, seed=1, rows=10)
    mapping = tmp_path / "talkingdata.toml"
    mapping.write_text('device_id = ["ip", "device", "os"]\nip = "ip"\nts = "click_time"\n'
                       'ts_format = "%Y-%m-%d %H:%M:%S"\npass = ["app", "channel"]\n')
    # The log is from 2017: --retime makes its first click happen now, keeping the gaps.
    before = int(time.time() * 1000)
    assert await run(settings, "replay", str(log), "--mapping", str(mapping), "--retime") == 0
    sent = raw_fields(settings)
    assert len(sent) == 10
    assert all(set(f) == {"device_id", "ip", "ts", "app", "channel"} for f in sent)
    assert before <= int(sent[0]["ts"]) <= int(time.time() * 1000)
    await run_pipeline(settings)
    keys = Keys(settings.namespace)
    parts = keys.partitions(settings.partitions)
    assert [e for part in parts for e in stream_entries(settings, part.dead)] == []
    assert sum(len(stream_entries(settings, part.verdicts)) for part in parts) == 10


QUOTED = ('ip,device,os,click_time,note\r\n'
          '1,1,13,1509978741000,"plain"\r\n'
          '2,1,13,1509978742000,"a, comma and ""quotes"""\r\n'
          '3,1,13,1509978743000,"two\r\nlines"\r\n'
          '4,1,13,1509978744000,last\r\n')


@pytest.mark.parametrize("container", ["csv", "csv.gz", "zip"])
async def test_compressed_and_quoted_input(settings: Settings, tmp_path: Path, container: str) -> None:
    log = tmp_path / f"quoted.{container}"
    if container == "csv":
        log.write_bytes(QUOTED.encode())
    elif container == "csv.gz":
        log.write_bytes(gzip.compress(QUOTED.encode()))
    else:
        with zipfile.ZipFile(log, "w") as archive:
            archive.writestr("inside/quoted.csv", QUOTED)
    mapping = mapping_from({"device_id": ["ip", "device"], "ip": "ip", "ts": "click_time", "pass": "note"})
    summary = await replay_file(log, "auto", None, settings, io.StringIO(), mapping=mapping)
    assert (summary.sent, summary.bad_lines) == (4, 0)
    assert [f["note"] for f in raw_fields(settings)] == ["plain", 'a, comma and "quotes"', "two\r\nlines", "last"]
    assert raw_fields(settings)[2] == {"device_id": "3:1", "ip": "0.0.0.3", "ts": "1509978743000",
                                       "note": "two\r\nlines"}


async def test_a_bad_record_after_a_multi_line_one_is_reported_by_its_first_line(
        settings: Settings, tmp_path: Path) -> None:
    log = tmp_path / "t.csv"
    log.write_text('device_id,ip,note\nd1,10.0.0.1,"one\ntwo\nthree"\nd2,10.0.0.2\nd3,10.0.0.3,x\n')
    summary = await replay_file(log, "auto", None, settings, io.StringIO())
    assert (summary.sent, summary.bad_lines) == (2, 1)
    dead = bad_line_partition(Keys(settings.namespace), settings).dead
    reasons = [f["reason"] for _, f in stream_entries(settings, dead)]
    assert reasons == ["bad_line: line 5: expected 3 columns, got 2"]


async def test_a_zip_of_two_files_is_refused(settings: Settings, tmp_path: Path) -> None:
    log = tmp_path / "two.zip"
    with zipfile.ZipFile(log, "w") as archive:
        archive.writestr("a.csv", "device_id,ip\n")
        archive.writestr("b.csv", "device_id,ip\n")
    with pytest.raises(FraudError, match="exactly one file, it holds 2"):
        await replay_file(log, "auto", None, settings, io.StringIO())


def _max_rss_kib(settings: Settings, log: Path, mapping: Path) -> int:
    """Replay in a `fraud replay` process of its own, and return that process's peak resident memory."""
    env = {**os.environ, "FRAUD_REDIS_URL": settings.redis_url, "FRAUD_HOME": str(settings.home)}
    process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "replay", str(log), "--mapping", str(mapping)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0
    return usage.ru_maxrss


def test_a_million_rows_replay_in_memory_that_does_not_grow(settings: Settings, tmp_path: Path) -> None:
    small, big = tmp_path / "small.csv.gz", tmp_path / "big.csv.gz"
    write_sample(small, seed=2, rows=20_000)
    write_sample(big, seed=2, rows=1_000_000)
    mapping = tmp_path / "talkingdata.toml"
    mapping.write_text('device_id = ["ip", "device", "os"]\nip = "ip"\nts = "click_time"\n'
                       'ts_format = "%Y-%m-%d %H:%M:%S"\npass = ["app", "channel"]\n')
    rss_small = _max_rss_kib(settings, small, mapping)
    with redis.Redis.from_url(settings.redis_url) as client:
        client.delete(Keys(settings.namespace).raw)
    rss_big = _max_rss_kib(settings, big, mapping)
    with redis.Redis.from_url(settings.redis_url) as client:
        assert client.xlen(Keys(settings.namespace).raw) == 1_000_000
    # Fifty times the rows, the same memory (within 8 MiB of noise): nothing is kept per row.
    assert rss_big < rss_small + 8 * 1024, f"peak RSS {rss_big} KiB for 1M rows vs {rss_small} KiB for 20k"
