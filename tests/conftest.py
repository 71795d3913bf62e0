"""Shared fixtures: real Redis Stack servers on free local ports, each with a temporary home."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pipeline.client.functions import library_source
from pipeline.core.settings import Settings
from pipeline.dev.cluster import LocalCluster, NodeAddress
from pipeline.dev.ports import free_port
from pipeline.dev.server import EmbeddedRedis
from tests.procs import thaw_pid
from tests.server_registry import register_every_server, stop_orphans

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# One libssl1.1 download serves every test session (and `fraud server start` in this tree).
LIBSSL_DIR = PROJECT_ROOT / ".fraud" / "libssl"


def pytest_sessionstart(session: pytest.Session) -> None:
    # Servers are daemons: a session killed before its fixtures ended left them running.
    stopped = stop_orphans()
    if stopped:
        print(f"stopped {len(stopped)} Redis server(s) an earlier, killed test session left running: pids {stopped}")
    register_every_server()


def load_library(url: str) -> None:
    """The admin's set-up step, as `fraud setup` does it: agents only check the library is there
    (FLUSHALL keeps functions, so once per server is enough)."""
    with redis.Redis.from_url(url) as admin:
        admin.function_load(library_source(), replace=True)


@contextlib.contextmanager
def running(server: EmbeddedRedis) -> Iterator[EmbeddedRedis]:
    """The server started, with the function library loaded as `fraud setup` does; stopped after."""
    server.start()
    load_library(server.url)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def unused_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def libssl_dir() -> Path:
    return LIBSSL_DIR


@pytest.fixture(scope="session")
def redis_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """The session's shared server; use `redis_url` for a clean database per test."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis-stack"), free_port(), libssl_dir=LIBSSL_DIR)
    with running(server):
        yield server


def clean_database(url: str) -> None:
    """Every other client's connection closed, then FLUSHALL. A closed connection's unread commands
    are dropped, never run: a command an earlier test's killed agent had sent but the server had not
    read yet cannot land in this test's data after the flush."""
    with redis.Redis.from_url(url) as client:
        client.client_kill_filter(_type="normal", skipme=True)
        client.flushall()


@pytest.fixture
def redis_url(redis_stack: EmbeddedRedis) -> str:
    clean_database(redis_stack.url)
    return redis_stack.url


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=redis_url, home=tmp_path)


@pytest.fixture
def fresh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A server of the test's own, free to kill and restart.

    ``appendfsync always``, so that a write acknowledged before a kill is on disk for certain.
    """
    server = EmbeddedRedis(tmp_path_factory.mktemp("fresh-server"), free_port(), appendfsync="always",
                           libssl_dir=LIBSSL_DIR)
    with running(server):
        yield server


@pytest.fixture
def freezable_server(fresh_server: EmbeddedRedis) -> Iterator[EmbeddedRedis]:
    """A server of the test's own that the test may freeze (SIGSTOP): thawed again whatever happens."""
    yield fresh_server
    if fresh_server.pid is not None:
        thaw_pid(fresh_server.pid)


# --- a 3-master Redis Cluster, shared by every test that needs one (starting one takes seconds) ---

CLUSTER_SHARDS = 3


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 3-master cluster of the session's own (its home under tmp), stopped by pid at the end."""
    nodes = NodeAddress.free(CLUSTER_SHARDS)
    local = LocalCluster(tmp_path_factory.mktemp("cluster"), nodes, libssl_dir=LIBSSL_DIR)
    local.start()
    try:
        for url in local.urls:
            load_library(url)
        yield local
    finally:
        local.stop()


@pytest.fixture
def cluster_settings(cluster: LocalCluster, tmp_path: Path) -> Settings:
    for url in cluster.urls:
        clean_database(url)
    # Any node will do: the agents find the others.
    return Settings(redis_url=cluster.urls[1], home=tmp_path)
