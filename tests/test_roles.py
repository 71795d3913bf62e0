"""Least privilege, end to end: the embedded server as `fraud server start` runs it over TLS
(``rediss://``), each command logging in as its role with no credentials typed, and each role's
user refused what it must not do.

The server asks every client for a certificate of its local CA and checks passwords per role; the
whole pipeline (producer, detector, aggregator, monitor, operator tools, status) runs on it, and
the server's ACL log must stay empty: no role was refused anything its job needs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from pipeline.client.functions import library_source
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.dev.certificates import TlsFiles
from pipeline.dev.credentials import credentials_file, tls_folder
from pipeline.dev.ports import free_port
from pipeline.ops.acl import ROLES
from tests.conftest import LIBSSL_DIR
from tests.outputs import stats_totals
from tests.test_access import fraud, ok
from tests.test_grafana_dashboard import FRAUD, dashboard_range, plugin_command, targets

SETTINGS = Settings()
KEYS = Keys(SETTINGS.namespace)
PARTITIONS = KEYS.partitions(SETTINGS.partitions)
# One partition's keys stand for every partition's (the rules name them all by one pattern).
PART = KEYS.partition(SETTINGS.partitions - 1)


class Protected:
    """The CLI-managed server: its URL (no credentials), home, and each role's password."""

    def __init__(self, home: Path, port: int) -> None:
        self.home, self.port = home, port
        self.url = f"rediss://127.0.0.1:{port}"
        self.tls = TlsFiles(tls_folder(home))

    def passwords(self) -> dict[str, str]:
        return dict(json.loads(credentials_file(self.home, self.port).read_text()))

    def client(self, role: str | None, certificate: bool = True, **options: Any) -> redis.Redis:
        tls: dict[str, Any] = {"ssl_ca_certs": str(self.tls.ca)}
        if certificate:
            tls.update(ssl_certfile=str(self.tls.client_cert), ssl_keyfile=str(self.tls.client_key))
        login = {} if role is None else {"username": role, "password": self.passwords()[role]}
        return redis.Redis(host="127.0.0.1", port=self.port, ssl=True, protocol=2, **tls, **login, **options)


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Protected]:
    home = tmp_path_factory.mktemp("protected")
    (home / "libssl").symlink_to(LIBSSL_DIR, target_is_directory=True)
    server = Protected(home, free_port())
    ok(fraud(server.url, "server", "start", home=home))
    try:
        yield server
    finally:
        ok(fraud(server.url, "server", "stop", home=home))


def refusals(protected: Protected) -> list[Any]:
    with protected.client("admin", decode_responses=True) as admin:
        return list(admin.execute_command("ACL", "LOG"))


def test_the_pipeline_runs_over_tls_with_a_user_per_role(protected: Protected, tmp_path: Path) -> None:
    url, home = protected.url, protected.home
    with protected.client("admin") as admin:
        admin.execute_command("ACL", "LOG", "RESET")
    output = ok(fraud(url, "blacklist", "add", "198.51.100.7", home=home))
    output += ok(fraud(url, "agent", "generator", "--rate", "0", "--total", "400", "--seed", "5", home=home))
    trace = tmp_path / "trace.jsonl"
    ok(fraud(url, "generate", "--out", str(trace), "--clicks", "100", "--seed", "6", home=home))
    output += ok(fraud(url, "replay", str(trace), home=home))
    for stage in ("router", "detector", "aggregator"):
        output += ok(fraud(url, "agent", stage, "--burst", home=home))
    for password in protected.passwords().values():
        assert password not in output
    assert refusals(protected) == [], "a role was refused something its job needs"
    with protected.client("admin") as admin:
        verdicts, dead = (sum(admin.xlen(getattr(p, s)) for p in PARTITIONS) for s in ("verdicts", "dead"))
        stats = stats_totals(admin, SETTINGS)
        assert admin.xlen(KEYS.raw) == 500 and verdicts + dead == 500 - stats.get("detector.duplicate", 0)
        assert stats["router.routed"] == 500 and stats["aggregator.counted"] == verdicts


def test_the_watchers_and_tools_run_with_their_roles(protected: Protected) -> None:
    url, home = protected.url, protected.home
    with protected.client("admin") as admin:
        admin.execute_command("ACL", "LOG", "RESET")
    output = ok(fraud(url, "agent", "monitor", "--once", "--interval", "0.1", home=home))
    output += ok(fraud(url, "status", home=home))
    output += ok(fraud(url, "offenders", "--by", "ip", home=home))
    output += ok(fraud(url, "group", "reset", "--stage", "router", "--to-earliest", "--force",
                       home=home))
    output += ok(fraud(url, "replay", "--from-stream", "--name", "again", home=home))
    for password in protected.passwords().values():
        assert password not in output
    assert refusals(protected) == [], "a role was refused something its job needs"
    with protected.client("admin") as admin:
        assert admin.keys(KEYS.health_series("*", "*"))


def test_nobody_gets_in_without_a_password_or_a_certificate(protected: Protected) -> None:
    with protected.client(None) as anonymous, pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with protected.client("detector", certificate=False) as no_certificate, pytest.raises(redis.ConnectionError):
        no_certificate.ping()
    plain = redis.Redis(host="127.0.0.1", port=protected.port, username="admin",
                        password=protected.passwords()["admin"], socket_timeout=2)
    with plain, pytest.raises(redis.ConnectionError):
        plain.ping()
    # Owner-only: the passwords and the keys.
    assert oct(credentials_file(protected.home, protected.port).stat().st_mode & 0o777) == "0o600"
    assert oct(protected.tls.client_key.stat().st_mode & 0o777) == "0o600"


ADMIN_ONLY = [("FUNCTION", "LOAD", "REPLACE", "#!lua name=evil\nredis.register_function('x', function() end)"),
              ("FUNCTION", "FLUSH"), ("CONFIG", "SET", "appendonly", "no"), ("FLUSHALL",), ("ACL", "SETUSER", "x"),
              ("SHUTDOWN", "NOSAVE"), ("KEYS", "*"), ("CLIENT", "KILL", "ID", "1")]
# What each role must not do, besides the admin's commands.
REFUSED: dict[str, list[tuple[str, ...]]] = {
    "producer": [("XRANGE", PART.verdicts, "-", "+"), ("XREAD", "STREAMS", PART.input, "0"),
                 ("XRANGE", KEYS.raw, "-", "+"), ("CF.ADD", PART.blacklist, "192.0.2.1"),
                 ("SREM", KEYS.blacklist_members, "192.0.2.1"), ("FCALL", "fraud_detect", "0"),
                 ("DEL", KEYS.raw), ("HGETALL", PART.stats), ("HSET", KEYS.config, "partitions", "3"),
                 ("XADD", PART.verdicts, "*", "a", "b"), ("XADD", PART.dead, "*", "a", "b")],
    "router": [("XADD", PART.verdicts, "*", "a", "b"), ("XRANGE", PART.input, "-", "+"),
               ("XREAD", "STREAMS", PART.input, "0"), ("CF.ADD", PART.blacklist, "192.0.2.1"),
               ("HSET", PART.lease("detector"), "owner", "x"), ("XGROUP", "SETID", PART.input, "detector", "0"),
               ("HSET", PART.stats, "router.routed", "0"), ("DEL", PART.routed), ("DEL", KEYS.raw),
               ("FCALL", "fraud_lease", "1", PART.lease("detector"), "0"), ("EVAL", "return 1", "0")],
    "detector": [("CF.ADD", PART.blacklist, "192.0.2.1"), ("CF.DEL", PART.blacklist, "192.0.2.1"),
                 ("TS.ADD", PART.series("clean"), "*", "1"), ("XGROUP", "SETID", KEYS.raw, "router", "0"),
                 ("XREAD", "STREAMS", KEYS.raw, "0"), ("XADD", KEYS.raw, "*", "a", "b"),
                 ("HSET", PART.lease("aggregator"), "owner", "x"), ("HSET", PART.stats, "x", "1"),
                 ("FCALL", "fraud_lease", "1", PART.lease("aggregator"), "0"),
                 ("ZADD", KEYS.members("aggregator"), "1", "x"), ("DEL", PART.verdicts), ("EVAL", "return 1", "0")],
    "aggregator": [("XADD", KEYS.raw, "*", "a", "b"), ("XRANGE", KEYS.raw, "-", "+"),
                   ("XREAD", "STREAMS", PART.input, "0"), ("CF.ADD", PART.blacklist, "192.0.2.1"),
                   ("XGROUP", "SETID", PART.input, "detector", "0"), ("XADD", PART.verdicts, "*", "a", "b"),
                   ("HSET", PART.lease("detector"), "owner", "x"), ("DEL", PART.series("clean")),
                   ("FCALL", "fraud_lease", "1", PART.lease("detector"), "0")],
    "monitor": [("XADD", KEYS.raw, "*", "a", "b"), ("FCALL", "fraud_detect", "0"), ("DEL", KEYS.raw),
                ("CF.ADD", PART.blacklist, "192.0.2.1"), ("XGROUP", "SETID", PART.input, "detector", "0"),
                ("HSET", PART.lease("detector"), "owner", "x"), ("HSETNX", KEYS.config, "partitions", "3"),
                # It merges the partitions' offender buckets into its own, and writes nothing of theirs.
                ("ZADD", PART.offenders("ip", "click_spam", 60_000, 0), "1", "x"),
                ("DEL", PART.offenders("ip", "click_spam", 60_000, 0))],
    "operator": [("SET", "elsewhere", "1"), ("GET", "elsewhere")],
    "dashboard": [("XADD", KEYS.raw, "*", "a", "b"), ("FCALL", "fraud_detect", "0"),
                  ("SET", f"{KEYS.namespace}:x", "1"), ("DEL", KEYS.raw), ("XTRIM", KEYS.raw, "MAXLEN", "0"),
                  ("TS.ADD", PART.series("clean"), "*", "1"), ("CF.ADD", PART.blacklist, "192.0.2.1"),
                  ("XGROUP", "SETID", PART.input, "detector", "0"), ("EVAL", "return 1", "0"),
                  ("GET", "elsewhere"), ("CLIENT", "LIST"), ("MONITOR",)],
}


@pytest.mark.parametrize("role", sorted(REFUSED))
def test_each_role_is_refused_what_it_must_not_do(role: str, protected: Protected) -> None:
    with protected.client(role) as client:
        assert client.ping()
        for command in (*REFUSED[role], *ADMIN_ONLY):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)
    with protected.client("admin") as admin:
        assert admin.execute_command("FUNCTION", "LIST", "LIBRARYNAME", "evil") == []


def test_only_the_admin_loads_the_function_library(protected: Protected) -> None:
    with protected.client("admin") as admin:
        assert admin.function_load(library_source(), replace=True) == b"fraud"


def test_the_dashboard_user_runs_every_panel_and_no_raw_write(protected: Protected) -> None:
    with protected.client("admin") as admin:
        now_ms = int(admin.time()[0]) * 1000
    from_ms, to_ms = dashboard_range(FRAUD, now_ms)
    with protected.client("dashboard", decode_responses=True) as dashboard:
        for _, target in targets(FRAUD):
            dashboard.execute_command(*plugin_command(target, from_ms, to_ms))
        # The plugin runs a target's raw `query` (type command) word for word: the user is the limit.
        for query in (f"XADD {KEYS.raw} * device_id d ip 192.0.2.1", f"DEL {KEYS.raw}", "FLUSHALL",
                      "CONFIG SET appendonly no", f"HSET {PART.stats} x 1", "FUNCTION DELETE fraud"):
            with pytest.raises(redis.exceptions.NoPermissionError):
                dashboard.execute_command(*query.split())
        # FCALL_RO (the offender tables) runs only functions flagged no-writes: never a step.
        with pytest.raises(redis.exceptions.ResponseError, match="write flag"):
            dashboard.execute_command("FCALL_RO", "fraud_detect", "0")


def test_an_agent_waits_for_a_missing_library_instead_of_loading_it(protected: Protected) -> None:
    with protected.client("admin") as admin:
        admin.function_delete("fraud")
    try:
        result = fraud(protected.url, "agent", "detector", "--burst", home=protected.home)
        assert result.returncode == 1
        assert "the 'fraud' function library is not loaded; an admin loads it with `fraud setup`" in result.stderr
    finally:
        ok(fraud(protected.url, "setup", home=protected.home))
    with protected.client("admin") as admin:
        assert admin.function_list("fraud")


def test_fraud_acl_prints_rules_without_secrets(protected: Protected) -> None:
    printed = ok(fraud(protected.url, "acl", home=protected.home))
    assert [line.split()[2] for line in printed.splitlines()] == list(ROLES)
    for password in protected.passwords().values():
        assert password not in printed
    assert os.path.exists(credentials_file(protected.home, protected.port))


def test_the_detector_keeps_and_drops_a_device_s_state(protected: Protected) -> None:
    """What fraud_detect does with a device's state, checked without running it (ACL DRYRUN): the
    trail's read and write, and one DEL of a window and its trail when the device goes quiet."""
    user = "detector"
    allowed = [("HMGET", PART.trail("d"), "beats", "lat", "lon", "at"), ("HSET", PART.trail("d"), "beats", "1"),
               ("DEL", PART.window("d"), PART.trail("d"))]
    with protected.client("admin", decode_responses=True) as admin:
        for command in allowed:
            assert admin.execute_command("ACL", "DRYRUN", user, *command) == "OK", command
        assert admin.execute_command("ACL", "DRYRUN", user, "HSET", PART.stats, "x", "1") != "OK"
