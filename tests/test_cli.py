"""The fraud command as a user meets it: one clear line for every mistake."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pipeline.cli.main import main
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.dev.ports import free_port
from pipeline.dev.server import EmbeddedRedis
from tests.conftest import LIBSSL_DIR
from tests.helpers import verdicts_by_raw_id
from tests.outputs import stats_totals
from tests.procs import stop_all, wait_until


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv", [
    ["bench", "--clicks", "0"],
    ["up", "--rate", "fast"],
    ["agent", "sideways"],
    ["blacklist"],
    ["nonsense"],
])
def test_bad_arguments_get_one_line_and_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    _, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert len(err.strip().splitlines()) == 1 and "error:" in err


def test_bad_setting_gets_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FRAUD_CLICK_SPAM_WINDOW_MS", "ten seconds")
    code, _, err = run_cli(["blacklist", "check", "192.0.2.1"], capsys)
    assert code == 2
    assert err.strip() == "fraud: error: FRAUD_CLICK_SPAM_WINDOW_MS must be an integer, got 'ten seconds'"


def test_unreachable_redis_gets_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FRAUD_REDIS_URL", f"redis://127.0.0.1:{free_port()}")
    code, _, err = run_cli(["blacklist", "check", "192.0.2.1"], capsys)
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "cannot reach Redis" in err


@pytest.fixture(scope="module")
def plain_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A Redis without the Bloom and TimeSeries modules."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("plain"), free_port(), libssl_dir=LIBSSL_DIR, modules=())
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("argv", [["blacklist", "check", "192.0.2.1"], ["agent", "detector", "--burst"]])
def test_redis_without_modules_is_named_in_one_line(plain_redis: EmbeddedRedis, argv: list[str],
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FRAUD_REDIS_URL", plain_redis.url)
    code, _, err = run_cli(argv, capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert "lacks the RedisBloom and RedisTimeSeries modules" in lines[0]


def test_blacklist_add_check_remove_load(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setenv("FRAUD_REDIS_URL", settings.redis_url)
    assert run_cli(["blacklist", "add", "203.0.113.1", "2001:DB8::7", "203.0.113.1"], capsys)[1] == \
        "added 2 address(es), 1 already listed\n"
    code, out, _ = run_cli(["blacklist", "check", "203.0.113.1", "2001:db8:0::7", "203.0.113.2"], capsys)
    assert out.splitlines() == ["203.0.113.1 listed", "2001:db8::7 listed", "203.0.113.2 not listed"]
    # Removing an address that was never listed must not touch the filter (it could
    # delete another address's fingerprint): the set of listed addresses decides.
    assert run_cli(["blacklist", "remove", "203.0.113.1", "198.51.100.1"], capsys)[1] == \
        "removed 1 address(es), 1 were not listed\n"
    with redis.Redis.from_url(settings.redis_url) as client:
        keys = Keys(settings.namespace)
        for copy in keys.partitions(settings.partitions):
            assert client.execute_command("CF.MEXISTS", copy.blacklist, "203.0.113.1", "2001:db8::7") == [0, 1]
    listing = tmp_path / "bad-ips.txt"
    listing.write_text("# known bad\n198.51.100.9\nnot-an-ip\n\n2001:db8::9  # a comment\n")
    code, out, err = run_cli(["blacklist", "load", str(listing)], capsys)
    assert code == 1
    assert out == "added 2 address(es), 0 already listed\n"
    assert err.strip() == f"{listing}:3: not an IPv4 or IPv6 address: 'not-an-ip'"


def test_blacklist_rejects_a_bad_address_before_touching_anything(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FRAUD_REDIS_URL", settings.redis_url)
    code, _, err = run_cli(["blacklist", "add", "203.0.113.1", "203.0.113.256"], capsys)
    assert (code, err) == (1, "fraud: error: not an IPv4 or IPv6 address: '203.0.113.256'\n")
    with redis.Redis.from_url(settings.redis_url) as client:
        assert not client.exists(Keys(settings.namespace).blacklist_members)


def test_up_demo_runs_the_pipeline_and_stops_cleanly_on_ctrl_c(settings: Settings, tmp_path: Path) -> None:
    env = dict(os.environ, FRAUD_REDIS_URL=settings.redis_url, FRAUD_HOME=str(tmp_path))
    up = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "up", "--demo", "--rate", "400",
                           "--refresh", "0.5"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with redis.Redis.from_url(settings.redis_url) as client:
            wait_until(lambda: stats_totals(client, settings).get("aggregator.counted", 0) >= 500, 60,
                       "500 clicks counted by the pipeline under fraud up")
    finally:
        up.send_signal(signal.SIGINT)
        try:
            out, err = up.communicate(timeout=60)
        finally:
            stop_all([up])  # a stop that failed leaves no agent behind to take later tests' leases
    assert up.returncode == 0, err
    assert "clicks in" in out and "verdicts" in out and "lag" in out
    verdicts = verdicts_by_raw_id(settings)
    assert {"clean", "ip_blacklist", "click_spam"} <= set(verdicts.values())
    # The router ran beside the other stages (the generator writes to clicks:raw), each in its process.
    with redis.Redis.from_url(settings.redis_url) as client:
        assert stats_totals(client, settings)["router.routed"] > 0
    for agent in ("router-1", "detector-1", "aggregator-1"):
        assert (tmp_path / "logs" / f"{agent}.log").stat().st_size > 0
