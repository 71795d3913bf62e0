"""Credentials and databases in FRAUD_REDIS_URL: every path works with them, none leaks a password.

A server of its own with a default-user password and an ACL user; each command of the pipeline
runs as a real process (``python -m pipeline.cli``) with a time limit, so a hang fails the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pipeline.core.keys import Keys
from pipeline.core.log import redact_url
from pipeline.core.settings import Settings
from pipeline.dev.ports import free_port
from pipeline.dev.server import EmbeddedRedis
from tests.conftest import LIBSSL_DIR, PROJECT_ROOT, running
from tests.outputs import read_partitions, stats_totals

ADMIN_PASSWORD = "adm1n-Pa55"
# Characters that must be quoted in a URL, so that the quoting is exercised too.
USER, USER_PASSWORD = "fraud", "s3cr:t@p/w"
ACL_RULES = f"{USER} on >{USER_PASSWORD} ~* &* +@all"
COMMAND_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("locked"), free_port(), libssl_dir=LIBSSL_DIR,
                           password=ADMIN_PASSWORD, acl_users=(ACL_RULES,))
    with running(server):
        yield server


def fraud(url: str, *argv: str, home: Path) -> subprocess.CompletedProcess[str]:
    """One ``fraud`` command as its own process; a hang fails the test instead of stalling it."""
    env = dict(os.environ, FRAUD_REDIS_URL=url, FRAUD_HOME=str(home), FRAUD_LOG_FORMAT="json",
               FRAUD_LOG_LEVEL="info")
    try:
        return subprocess.run([sys.executable, "-m", "pipeline.cli", *argv], env=env, cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"`fraud {' '.join(argv)}` hung for {COMMAND_TIMEOUT_S} s against "
                             f"{redact_url(url)}") from err


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def assert_no_secret(text: str) -> None:
    for secret in (ADMIN_PASSWORD, USER_PASSWORD, "s3cr%3At%40p%2Fw"):
        assert secret not in text


ACCESS_URLS = {
    "acl-user": lambda s: s.url_for(USER, USER_PASSWORD),
    "acl-user-db1": lambda s: s.url_for(USER, USER_PASSWORD, db=1),
    "password-db1": lambda s: s.url_for(None, ADMIN_PASSWORD, db=1),
    "query-password-db1": lambda s: f"redis://127.0.0.1:{s.port}?password={ADMIN_PASSWORD}&db=1",
}


@pytest.mark.parametrize("access", ACCESS_URLS)
def test_every_fast_path_works_with_credentials_and_a_database(
        access: str, locked_server: EmbeddedRedis, tmp_path: Path) -> None:
    url = ACCESS_URLS[access](locked_server)
    db = 1 if "db1" in access else 0
    with redis.Redis(port=locked_server.port, password=ADMIN_PASSWORD, db=db) as admin:
        admin.flushall()
    trace = tmp_path / "trace.jsonl"
    ok(fraud(url, "generate", "--out", str(trace), "--clicks", "300", "--seed", "3", home=tmp_path))
    output = ok(fraud(url, "replay", str(trace), home=tmp_path))
    output += ok(fraud(url, "agent", "generator", "--rate", "0", "--total", "200", "--seed", "4", home=tmp_path))
    output += ok(fraud(url, "agent", "router", "--burst", home=tmp_path))
    output += ok(fraud(url, "agent", "detector", "--burst", home=tmp_path))
    output += ok(fraud(url, "agent", "aggregator", "--burst", home=tmp_path))
    output += ok(fraud(url, "group", "reset", "--stage", "router", "--to-earliest", "--force",
                       home=tmp_path))
    output += ok(fraud(url, "replay", "--from-stream", "--name", "again", home=tmp_path))
    output += ok(fraud(url, "status", home=tmp_path))
    assert_no_secret(output)
    settings = Settings()
    keys = Keys(settings.namespace)
    # The work landed in the URL's database, and only there.
    with redis.Redis(port=locked_server.port, password=ADMIN_PASSWORD, db=db) as admin:
        assert admin.xlen(keys.raw) == 500
        verdicts = len(read_partitions(admin, settings, "verdicts"))
        dead = len(read_partitions(admin, settings, "dead"))
        assert verdicts + dead > 0
        assert stats_totals(admin, settings)["aggregator.counted"] == verdicts
    with redis.Redis(port=locked_server.port, password=ADMIN_PASSWORD, db=1 - db) as other:
        assert other.dbsize() == 0


@pytest.mark.parametrize("argv", [("status",), ("agent", "detector", "--burst"), ("replay", "--from-stream",
                                                                                   "--name", "x")])
def test_a_wrong_password_fails_in_one_line_that_names_no_secret(
        argv: tuple[str, ...], locked_server: EmbeddedRedis, tmp_path: Path) -> None:
    wrong = "wr0ng-Secret"
    for url in (locked_server.url_for(USER, wrong), f"redis://127.0.0.1:{locked_server.port}/0?password={wrong}"):
        result = fraud(url, *argv, home=tmp_path)
        assert result.returncode != 0
        text = result.stdout + result.stderr
        assert wrong not in text and "Traceback" not in text, text
        assert "WRONGPASS" in text or "invalid" in text, text


def test_an_unreachable_url_with_passwords_names_no_secret(tmp_path: Path) -> None:
    url = f"redis://{USER}:{ADMIN_PASSWORD}@127.0.0.1:{free_port()}/0?password={ADMIN_PASSWORD}"
    for argv in (("status",), ("status", "--json"), ("agent", "detector", "--burst"),
                 ("blacklist", "check", "192.0.2.1")):
        result = fraud(url, *argv, home=tmp_path)
        assert result.returncode == 1, result.stdout + result.stderr
        text = result.stdout + result.stderr
        assert_no_secret(text)
        assert "cannot reach Redis at redis://fraud:***@127.0.0.1" in text, text


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://u:pw@h:1/0", "redis://u:***@h:1/0"),
    ("redis://:pw@h", "redis://***@h"),
    ("redis://h:1?password=pw&db=1", "redis://h:1?password=***&db=1"),
    ("rediss://a:pw@c:1/2?db=3;Password=pw", "rediss://a:***@c:1/2?db=3;Password=***"),
    ("redis://h:1/0", "redis://h:1/0"),
])
def test_redact_url_hides_user_info_and_query_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown
