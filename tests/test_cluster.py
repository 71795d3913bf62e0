"""The pipeline on a real 3-master Redis Cluster of embedded Redis Stack nodes (``fraud cluster``)."""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from agents.generator import blacklisted_ips
from pipeline.client.cluster import ClusterClient, command_key, slot_of
from pipeline.client.connection import open_fast_client, open_redis
from pipeline.client.functions import library_state
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.dev.cluster import LocalCluster, NodeAddress
from pipeline.ops.blacklist import add_ips, check_ips
from tests.conftest import LIBSSL_DIR, free_port, load_library
from tests.helpers import xadd_all
from tests.outputs import check_commit_logs, open_client, pipeline_drained
from tests.partition_audit import check_against_model, labelled_trace
from tests.procs import spawn_agent, stop_all, wait_until

SHARDS = 3
CLICKS = 6_000


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 3-master cluster of the session's own (its home under tmp), stopped by pid at the end."""
    nodes = [NodeAddress(free_port(), free_port()) for _ in range(SHARDS)]
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
        with redis.Redis.from_url(url) as node:
            node.flushall()
    # Any node will do: the agents find the others.
    return Settings(redis_url=cluster.urls[1], home=tmp_path)


def test_the_local_cluster_serves_every_slot_with_the_modules(cluster: LocalCluster) -> None:
    rows = cluster.status()
    assert [row["state"] for row in rows] == ["ok"] * SHARDS
    assert [row["role"] for row in rows] == ["master"] * SHARDS
    for url in cluster.urls:
        with redis.Redis.from_url(url) as node:
            assert {m[b"name"] for m in node.module_list()} >= {b"bf", b"timeseries"}


def test_a_command_goes_to_the_node_of_its_key() -> None:
    lease = "clicks:{5}:lease:detector"
    assert command_key(["FCALL", "fraud_detect", 3, lease, "x", "y"]) == lease
    assert command_key(["XREAD", "COUNT", 10, "BLOCK", 5, "STREAMS", "clicks:{2}:in", "0"]) == "clicks:{2}:in"
    assert command_key(["XINFO", "GROUPS", "clicks:{1}:in"]) == "clicks:{1}:in"
    assert command_key(["FUNCTION", "LIST"]) is None
    assert slot_of("clicks:{3}:in") == slot_of("clicks:{3}:verdicts") == slot_of(b"3")


def test_the_fast_client_follows_moved_and_ask(cluster: LocalCluster, cluster_settings: Settings) -> None:
    """Keys of every partition through one client seeded by one node; then a slot half-migrated
    (the key already on the target): the client is answered ASK and follows it."""
    keys = Keys(cluster_settings.namespace)
    parts = keys.partitions(8)

    async def run() -> None:
        client = await open_fast_client(cluster_settings)
        assert isinstance(client, ClusterClient)
        try:
            replies = await client.pipeline([("SET", p.routed, str(p.number)) for p in parts])
            assert replies == [b"OK"] * len(parts)
            assert await client.pipeline([("GET", p.routed) for p in parts]) == [str(p.number).encode() for p in parts]
            assert await library_state(client) == "current"
            # The map goes stale: every slot said to be on one node; MOVED brings the truth back.
            client._slots = [client._slots[0]] * len(client._slots)
            assert await client.pipeline([("GET", p.routed) for p in parts]) == [str(p.number).encode() for p in parts]
            await _follows_ask(cluster, client, parts[0].routed)
        finally:
            await client.close()
    asyncio.run(run())


async def _follows_ask(cluster: LocalCluster, client: ClusterClient, key: str) -> None:
    with RedisCluster.from_url(cluster.urls[0]) as admin:
        slot = slot_of(key)
        source = admin.get_node_from_key(key)
        target = next(n for n in admin.get_primaries() if n.port != source.port)
        ids = {n.port: admin.cluster_myid(n) for n in (source, target)}
        src, dst = redis.Redis(port=source.port), redis.Redis(port=target.port)
        try:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.port])
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target.port])
            src.execute_command("MIGRATE", "127.0.0.1", target.port, key, 0, 5000)
            # The source no longer has the key: it answers ASK, and the client reads it on the target.
            assert await client.execute("GET", key) == b"0"
        finally:
            for node in (dst, src):
                node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target.port])
            src.close()
            dst.close()
    assert await client.execute("GET", key) == b"0"


def _load_blacklist(settings: Settings) -> None:
    async def load() -> None:
        client = await open_redis(settings)
        try:
            await add_ips(client, Keys(settings.namespace), settings, blacklisted_ips())
            checked = await check_ips(client, Keys(settings.namespace), settings, blacklisted_ips()[:3])
            assert all(in_set and in_filter for _, in_set, in_filter in checked)
        finally:
            await client.aclose()
    asyncio.run(load())


def test_the_pipeline_on_a_cluster_gives_the_sequential_model_outcomes(cluster: LocalCluster,
                                                                       cluster_settings: Settings,
                                                                       tmp_path: Path) -> None:
    """Router, two detectors and an aggregator as processes pointed at one node; a seeded labelled
    trace into clicks:raw: every outcome is the sequential model's, and the partitions are spread
    over the three masters."""
    settings = cluster_settings
    _load_blacklist(settings)
    log = tmp_path / "agents.log"
    started: list[subprocess.Popen[bytes]] = []
    try:
        for stage, name in (("router", "router-1"), ("detector", "detector-1"), ("detector", "detector-2"),
                            ("aggregator", "aggregator-1")):
            started.append(spawn_agent(settings.redis_url, stage, name, log=log))
        xadd_all(settings, labelled_trace(seed=11, count=CLICKS))
        with open_client(settings.redis_url) as client:
            wait_until(lambda: pipeline_drained(client, settings), 60, "every stage to commit all its input")
            assert check_commit_logs(client, settings) > 0
            by_node = Counter(client.get_node_from_key(p.input).port
                              for p in Keys(settings.namespace).partitions(settings.partitions))
    finally:
        stop_all(started)
    assert all(p.returncode in (0, -9) for p in started), log.read_text()[-2000:]
    check_against_model(settings)
    assert len(by_node) == SHARDS and max(by_node.values()) <= settings.partitions // 2, by_node
    for url in cluster.urls:
        with redis.Redis.from_url(url) as node:
            assert node.dbsize() > 0
