"""The dashboard's counts across a failover: RedisTimeSeries' view of the cluster goes stale when a
replica takes over (a shard it does not know), and the monitor agent repairs it at its next tick."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.dev.cluster import LocalCluster
from pipeline.ops.setup import set_up
from tests.helpers import run_pipeline, xadd_all
from tests.procs import wait_until
from tests.test_cluster_dashboard import clicks, global_counts, monitor_tick, status_document
from tests.test_cluster_failover import SHARDS, _role, replicated  # noqa: F401 (the fixture)


def cluster_ok(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_timeout=2) as node:
            return "cluster_state:ok" in node.execute_command("CLUSTER", "INFO").decode()
    except redis.RedisError:
        return False


def test_counts_fail_after_a_failover_until_the_monitor_refreshes_the_view(replicated: LocalCluster,  # noqa: F811
                                                                          tmp_path: Path) -> None:
    settings = Settings(redis_url=replicated.urls[1], home=tmp_path)
    asyncio.run(set_up(settings))
    xadd_all(settings, clicks(int(time.time() * 1000)))
    asyncio.run(run_pipeline(settings))
    with RedisCluster.from_url(settings.redis_url, decode_responses=True) as client:
        expected = Counter(f["verdict"] for part in Keys(settings.namespace).partitions(settings.partitions)
                           for _, f in client.xrange(part.verdicts))
    assert sum(expected.values()) == 120
    assert global_counts(replicated.urls[0], settings.namespace) == expected
    # The first master killed; its replica (the first replica node) takes over.
    victim, heir = replicated.servers[0], replicated.servers[SHARDS]
    os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
    live = replicated.urls[1:SHARDS + 1]
    wait_until(lambda: _role(heir) == "master" and all(cluster_ok(url) for url in live), 30,
               "the replica to be promoted and the cluster to be ok again")
    # The live masters' modules still fan out to the dead one: the count panels fail, not lie
    # (each refusal takes the module's 5 s timeout: one master is asked, the new one).
    with pytest.raises(redis.ResponseError, match="multi-shard command failed"):
        global_counts(heir.url, settings.namespace)
    # One tick of the real monitor agent: it finds the stale views and refreshes them.
    asyncio.run(monitor_tick(settings))
    for url in live:
        assert global_counts(url, settings.namespace) == expected, url
    # fraud status per shard: the heir a master with the victim's partitions, the victim failed,
    # the other replicas beside their masters.
    snap = asyncio.run(status_document(settings))
    rows = {row["address"]: row for row in snap["shards"]}
    address = {server: f"127.0.0.1:{server.port}" for server in replicated.servers}
    assert rows[address[victim]]["state"] == "failed" and rows[address[victim]]["partitions"] == []
    assert (rows[address[heir]]["role"], rows[address[heir]]["state"]) == ("master", "ok")
    masters = [rows[address[s]] for s in (heir, *replicated.servers[1:SHARDS])]
    assert sorted(p for row in masters for p in row["partitions"]) == list(range(settings.partitions))
    for index, replica in enumerate(replicated.servers[SHARDS + 1:], start=1):
        row = rows[address[replica]]
        assert (row["role"], row["master"]) == ("replica", address[replicated.servers[index]])
        assert row["partitions"] == rows[address[replicated.servers[index]]]["partitions"]
