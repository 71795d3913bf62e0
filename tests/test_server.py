"""The embedded Redis Stack against a real redis-server: modules, CLI, durability, refusals."""

from __future__ import annotations

import json
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from pipeline.cli import main as cli
from pipeline.cli import server as server_module
from pipeline.cli.main import main
from pipeline.dev.credentials import credentials_file
from pipeline.dev.libssl import LibsslError, security_uri
from pipeline.dev.server import EmbeddedRedis, ServerError
from tests.procs import wait_until


def test_only_bloom_and_timeseries_are_loaded(redis_stack: EmbeddedRedis, redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        names = {entry[b"name"].decode() for entry in client.module_list()}
    assert names == {"bf", "timeseries"}
    assert redis_stack.modules() == ["bf", "timeseries"]


def test_server_command_is_wired_into_the_cli() -> None:
    # The other CLI tests isolate `fraud server`; this one keeps it reachable through the full CLI.
    for action, handler in (("start", server_module._start), ("stop", server_module._stop),
                            ("status", server_module._status)):
        args = cli.build_parser().parse_args(["server", action])
        assert (args.command, args.action, args.run) == ("server", action, handler)


def _only_server_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    # These tests are about `fraud server`; a sibling command module that fails to import
    # has tests of its own to say so.
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("pipeline.cli.server",))


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, unused_port: int,
            libssl_dir: Path) -> Iterator[str]:
    """FRAUD_* variables for a CLI-managed server of the test's own; returns its URL."""
    _only_server_commands(monkeypatch)
    libssl_dir.mkdir(parents=True, exist_ok=True)
    # Share the project's libssl download instead of fetching it again into this home.
    (tmp_path / "libssl").symlink_to(libssl_dir, target_is_directory=True)
    url = f"redis://127.0.0.1:{unused_port}"
    monkeypatch.setenv("FRAUD_REDIS_URL", url)
    monkeypatch.setenv("FRAUD_HOME", str(tmp_path))
    yield url
    main(["server", "stop"])


def test_cli_start_status_stop(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["server", "status"]) == 3
    assert capsys.readouterr().out.startswith("not running: ")
    assert main(["server", "start"]) == 0
    started = capsys.readouterr().out
    assert started.startswith("started: pid ") and cli_env in started

    assert main(["server", "start"]) == 0
    assert capsys.readouterr().out.startswith("already running: pid ")

    assert main(["server", "status"]) == 0
    status = capsys.readouterr().out
    assert status.startswith("running: pid ") and "modules: bf, timeseries" in status
    # Protected by default: nobody gets in without a role's password, which only the owner can read.
    with redis.Redis.from_url(cli_env) as anonymous, pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    credentials = credentials_file(Path(os.environ["FRAUD_HOME"]), urlsplit(cli_env).port or 0)
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert stat.S_IMODE(credentials.parent.stat().st_mode) == 0o700
    admin_password = json.loads(credentials.read_text())["admin"]
    with redis.Redis.from_url(cli_env, username="admin", password=admin_password) as admin:
        assert admin.ping()
        assert "fraud_detect" in str(admin.function_list("fraud"))

    assert main(["server", "stop"]) == 0
    assert capsys.readouterr().out.startswith("stopped: pid ")
    assert main(["server", "status"]) == 3
    assert main(["server", "stop"]) == 0


@pytest.mark.parametrize("url", ["redis://example.invalid:6379", "redis://10.0.0.1:6379",
                                 "http://127.0.0.1:6379"])
def test_cli_refuses_a_server_it_cannot_serve(url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _only_server_commands(monkeypatch)
    monkeypatch.setenv("FRAUD_REDIS_URL", url)
    monkeypatch.setenv("FRAUD_HOME", str(tmp_path))
    assert main(["server", "start"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fraud: error: ")
    assert not list(tmp_path.iterdir())


def test_data_survives_sigkill(fresh_server: EmbeddedRedis) -> None:
    with redis.Redis.from_url(fresh_server.url) as client:
        client.set("plain", "kept")
        client.execute_command("BF.ADD", "seen", "device-1")
        client.execute_command("TS.ADD", "clicks", 1_000, 7)
        client.xadd("stream", {"click": "1"})
    old_pid = fresh_server.pid

    fresh_server.kill()
    assert not fresh_server.is_running()
    fresh_server.start()

    assert fresh_server.pid != old_pid
    with redis.Redis.from_url(fresh_server.url) as client:
        assert client.get("plain") == b"kept"
        assert client.execute_command("BF.EXISTS", "seen", "device-1") == 1
        timestamp, value = client.execute_command("TS.GET", "clicks")
        assert (int(timestamp), float(value)) == (1_000, 7.0)
        assert client.xlen("stream") == 1


LOADING_ENTRIES = 1_500_000
LOADED_IN = re.compile(r"DB loaded from (?:append only file|disk): ([\d.]+) seconds")


def test_start_returns_only_once_the_data_is_loaded(fresh_server: EmbeddedRedis) -> None:
    # Enough data that loading the append-only file takes measurable time after a restart.
    with redis.Redis.from_url(fresh_server.url) as client:
        for first in range(0, LOADING_ENTRIES, 250_000):
            client.eval("for i = ARGV[1], ARGV[2] do redis.call('SET', 'k' .. i, i) end", 0,
                        first, first + 249_999)
        assert client.dbsize() == LOADING_ENTRIES
    fresh_server.stop()
    fresh_server.start(timeout=120)
    # The very first command after start(): refused with LOADING if start returned too early.
    with redis.Redis.from_url(fresh_server.url) as client:
        assert client.ping()
        assert client.dbsize() == LOADING_ENTRIES
    loaded = [float(m[1]) for m in LOADED_IN.finditer(fresh_server.logfile.read_text())]
    assert loaded and loaded[-1] >= 0.3, f"loading took {loaded}: too short to show the wait"


def test_start_that_never_gets_ready_says_what_it_waited_for(fresh_server: EmbeddedRedis,
                                                              libssl_dir: Path) -> None:
    with redis.Redis.from_url(fresh_server.url) as client:
        # Incompressible values over 1 KiB: the loading server serves clients after every key.
        client.mset({f"k{i}": os.urandom(1100) for i in range(300)})
        # Rewritten, the append-only file starts with an RDB image, whose loading obeys key-load-delay.
        client.bgrewriteaof()
        wait_until(lambda: client.info("persistence")["aof_rewrite_in_progress"] == 0
                   and client.info("persistence")["aof_rewrite_scheduled"] == 0, 30, "the AOF rewrite")
    fresh_server.stop()
    # 0.1 s per key: loading lasts 30 s, far beyond the timeout; the server answers LOADING
    # meanwhile (it serves clients every 1 KiB loaded).
    slow = EmbeddedRedis(fresh_server.home, fresh_server.port, libssl_dir=libssl_dir,
                         extra_args=("--key-load-delay", "100000", "--loading-process-events-interval-bytes", "1024"))
    started = time.monotonic()
    with pytest.raises(ServerError, match="did not finish loading its data in time"):
        slow.start(timeout=3)
    assert time.monotonic() - started < 10
    assert not slow.is_running()


def test_stop_and_kill_are_no_ops_when_not_running(tmp_path: Path, unused_port: int) -> None:
    server = EmbeddedRedis(tmp_path, unused_port)
    assert server.pid is None and not server.is_running()
    server.stop()
    server.kill()


def test_stale_pidfile_does_not_count(fresh_server: EmbeddedRedis) -> None:
    fresh_server.kill()
    fresh_server.pidfile.write_text("1\n")  # pid 1 exists but is no redis-server
    assert not fresh_server.is_running()
    fresh_server.start()
    assert fresh_server.is_running()


def test_port_taken_by_another_server_fails_fast(redis_stack: EmbeddedRedis, tmp_path: Path,
                                                 libssl_dir: Path) -> None:
    intruder = EmbeddedRedis(tmp_path, redis_stack.port, libssl_dir=libssl_dir)
    with pytest.raises(ServerError, match="Address already in use"):
        intruder.start(timeout=10)
    assert not intruder.is_running()
    assert redis_stack.is_running()


def _apt_root(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_security_uri_from_deb822_sources(tmp_path: Path) -> None:
    root = _apt_root(tmp_path, {"sources.list.d/debian.sources": (
        "Types: deb\n# a comment\nURIs: http://mirror.test/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://mirror.test/debian-security/\nSuites: bookworm-security\nComponents: main\n"
    ), "sources.list.d/other.sources.disabled": "Types: deb\nURIs: http://x.test\nSuites: a-security\n"})
    assert security_uri(root) == "http://mirror.test/debian-security"


def test_security_uri_from_classic_sources(tmp_path: Path) -> None:
    root = _apt_root(tmp_path, {"sources.list": (
        "# deb http://commented.test/debian-security bookworm-security main\n"
        "deb http://mirror.test/debian bookworm main\n"
        "deb [ arch=amd64 signed-by=/k.gpg ] http://mirror.test/security bookworm-security main\n"
    )})
    assert security_uri(root) == "http://mirror.test/security"


def test_security_uri_missing_is_one_clear_error(tmp_path: Path) -> None:
    root = _apt_root(tmp_path, {"sources.list": "deb http://mirror.test/debian bookworm main\n"})
    with pytest.raises(LibsslError, match="no security suite"):
        security_uri(root)


def test_a_relative_acl_file_is_handed_to_the_server_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server resolves a relative --aclfile from its --dir: with the default FRAUD_HOME (.fraud,
    relative) it found no ACL file and refused to start (./dev.sh demo on a fresh clone)."""
    monkeypatch.chdir(tmp_path)
    server = EmbeddedRedis(Path(".fraud"), 6399, aclfile=Path(".fraud/redis-6399/users.acl"))
    assert server.aclfile == tmp_path / ".fraud" / "redis-6399" / "users.acl"
