"""The pipeline on a real 3-master Redis Cluster of embedded Redis Stack nodes (``fraud cluster``)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
from collections import Counter
from pathlib import Path

import orjson
import pytest
import redis
from redis.cluster import RedisCluster

from agents.generator import blacklisted_ips
from pipeline.cli.main import main
from pipeline.client.cluster import ClusterClient, command_key, slot_of
from pipeline.client.connection import open_fast_client, open_redis
from pipeline.client.functions import library_state
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.dev.cluster import LocalCluster
from pipeline.dev.slot_placement import partition_slots, unpartitioned_keys
from pipeline.ops.blacklist import add_ips, check_ips
from pipeline.ops.reshard import move_slot
from tests.conftest import CLUSTER_SHARDS
from tests.helpers import xadd_all
from tests.outputs import check_commit_logs, group_state, lease_owners, open_client, pipeline_drained
from tests.partition_audit import check_against_model, labelled_trace
from tests.procs import freeze, frozen, kill_and_settle_on, spawn_agent, stop_all, thaw, uncommitted_owned, wait_until

CLICKS = 6_000


def test_the_local_cluster_serves_every_slot_with_the_modules(cluster: LocalCluster) -> None:
    rows = cluster.status()
    assert [row["state"] for row in rows] == ["ok"] * CLUSTER_SHARDS
    assert [row["role"] for row in rows] == ["master"] * CLUSTER_SHARDS
    for url in cluster.urls:
        with redis.Redis.from_url(url) as node:
            assert {m[b"name"] for m in node.module_list()} >= {b"bf", b"timeseries"}


@pytest.mark.parametrize(("partitions", "shards"), [(8, 3), (16, 3), (9, 3), (8, 4), (32, 5), (3, 3)])
def test_each_master_serves_an_even_share_of_the_partitions(partitions: int, shards: int) -> None:
    slots = partition_slots(partitions, shards)
    assert sorted(s for served in slots for s in served) == list(range(16384))
    held = Counter(next(m for m, served in enumerate(slots) if slot_of(str(p)) in served) for p in range(partitions))
    assert len(held) == shards and max(held.values()) <= -(-partitions // shards), held


@pytest.mark.parametrize(("partitions", "shards"), [(8, 3), (16, 3), (8, 4), (6, 3)])
def test_the_unpartitioned_keys_go_to_a_master_with_the_fewest_partitions(partitions: int, shards: int) -> None:
    unpartitioned = unpartitioned_keys("clicks")
    assert {"clicks:raw", "clicks:config", "clicks:lease:router"} <= set(unpartitioned)
    slots = partition_slots(partitions, shards, unpartitioned)

    def master_of(key: str | bytes) -> int:
        return next(m for m, served in enumerate(slots) if slot_of(key) in served)

    held = Counter(master_of(str(p)) for p in range(partitions))
    fewest = min(held[m] for m in range(shards))
    owners = {master_of(key) for key in unpartitioned}
    assert len(owners) == 1 and held[owners.pop()] == fewest, held


def test_the_local_cluster_places_the_partitions_evenly(cluster: LocalCluster) -> None:
    """The running cluster, as its nodes see it: each master serves 2 or 3 of the 8 partitions'
    slots, and clicks:raw is on the one with 2 (with the router, the heaviest key there is)."""
    with RedisCluster.from_url(cluster.urls[0]) as admin:
        held = Counter(admin.get_node_from_key(f"{{{p}}}").port for p in range(8))
        raw_master = admin.get_node_from_key("clicks:raw").port
    assert sorted(held.values()) == [2, 3, 3], held
    assert held[raw_master] == 2, (raw_master, held)


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
            assert await client.execute("GET", key) == b"0"
            # Back where it was, so that the partitions stay evenly placed for the next tests.
            move_slot(dst, src, "127.0.0.1", source.port, slot)
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
    fair_share = -(-settings.partitions // CLUSTER_SHARDS)
    assert len(by_node) == CLUSTER_SHARDS and max(by_node.values()) <= fair_share, by_node
    for url in cluster.urls:
        with redis.Redis.from_url(url) as node:
            assert node.dbsize() > 0


def _spawn(settings: Settings, log: Path, *names: tuple[str, str]) -> list[subprocess.Popen[bytes]]:
    # More attempts than kills: a batch a killed detector was applying is never dead-lettered for it.
    return [spawn_agent(settings.redis_url, stage, name, {"FRAUD_MAX_ATTEMPTS": "10"}, log=log)
            for stage, name in names]


def _kill_and_settle(cluster: LocalCluster, process: subprocess.Popen[bytes]) -> None:
    """procs.kill_and_settle for a cluster's several nodes."""
    nodes = [redis.Redis.from_url(url) for url in cluster.urls]
    try:
        kill_and_settle_on(nodes, process)
    finally:
        for node in nodes:
            node.close()


def _owner_holding_work(client: RedisCluster, settings: Settings, process: subprocess.Popen[bytes],
                        name: str, more: list[list[str]]) -> None:
    """Freeze the detector, then send clicks until partitions it owns hold entries it has not
    committed (it cannot commit them any more): killing it then certainly leaves work behind."""
    wait_until(lambda: name in lease_owners(client, settings, "detector").values(), 30, f"{name} to own partitions")
    freeze(process)
    xadd_all(settings, more)
    wait_until(lambda: uncommitted_owned(client, settings, "detector", name) > 0, 30,
               f"the router to route clicks into a partition frozen {name} owns")


def test_detectors_sigkilled_with_uncommitted_work_on_a_cluster(cluster: LocalCluster, cluster_settings: Settings,
                                                                tmp_path: Path) -> None:
    """Two detectors, each SIGKILLed in turn while it owns partitions with uncommitted entries
    (frozen first, so this is certain): their partitions go to the others, and every click's
    outcome is still the sequential model's, once; the commit logs show no overlap."""
    settings = cluster_settings
    _load_blacklist(settings)
    log = tmp_path / "agents.log"
    trace = labelled_trace(seed=12, count=CLICKS)
    chunk = CLICKS // 3
    started = _spawn(settings, log, ("router", "router-1"), ("detector", "detector-1"), ("detector", "detector-2"),
                     ("aggregator", "aggregator-1"))
    try:
        with open_client(settings.redis_url) as client:
            detectors = started[1:3]
            for victim, name, more in ((1, "detector-1", trace[:chunk]), (2, "detector-2", trace[chunk:2 * chunk])):
                # The other detectors frozen too: none can take the victim's partitions (its lease
                # runs out while it is frozen) before its uncommitted work is there and it is killed.
                with frozen(*(d for d in detectors if d is not started[victim])):
                    _owner_holding_work(client, settings, started[victim], name, more)
                    _kill_and_settle(cluster, started[victim])
                detectors.remove(started[victim])
                spawned = _spawn(settings, log, ("detector", f"detector-{victim + 2}"))
                started += spawned
                detectors += spawned
            xadd_all(settings, trace[2 * chunk:])
            wait_until(lambda: pipeline_drained(client, settings), 60, "every stage to commit all its input")
            assert check_commit_logs(client, settings) > 0
            assert [p.poll() for p in started] == [None, -9, -9, None, None, None], log.read_text()[-2000:]
    finally:
        stop_all(started)
    check_against_model(settings)


def test_a_partition_moved_to_another_master_mid_flow(cluster: LocalCluster, cluster_settings: Settings,
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Partition 0's slot moves to another master (``fraud cluster move``) while its detector,
    frozen, holds uncommitted entries of it and a stale slot map, and the router goes on routing
    into it: the agents follow the MOVED replies, and every click's outcome is the sequential
    model's, once."""
    settings = cluster_settings
    _cli_env(monkeypatch, settings)
    _load_blacklist(settings)
    log = tmp_path / "agents.log"
    trace = labelled_trace(seed=13, count=CLICKS)
    chunk = CLICKS // 3
    keys = Keys(settings.namespace).partition(0)
    started = _spawn(settings, log, ("router", "router-1"), ("detector", "detector-1"), ("detector", "detector-2"),
                     ("aggregator", "aggregator-1"))
    try:
        with open_client(settings.redis_url) as client:
            xadd_all(settings, trace[:chunk])
            wait_until(lambda: (group_state(client, keys.input, "detector") or (None,))[0] == 0 and
                       lease_owners(client, settings, "detector").get(0), 30, "partition 0 to be owned and judged")
            owner = lease_owners(client, settings, "detector")[0]
            detector, other = (started[1], started[2]) if owner == "detector-1" else (started[2], started[1])
            # The other detector frozen too, so that partition 0 stays with the frozen owner until the move.
            with frozen(other):
                _owner_holding_work(client, settings, detector, owner, trace[chunk:2 * chunk])
                source = client.get_node_from_key(keys.input)
                target = next(n for n in client.get_primaries() if n.port != source.port)
                moved_before = _moved_replies(source.port)
                moving = [xadd_all_in_thread(settings, trace[2 * chunk:])]
                assert main(["cluster", "move", "--partition", "0", "--to", f"127.0.0.1:{target.port}"]) == 0
                thaw(detector)
            moving[0].join(30)
            out = capsys.readouterr().out
            assert re.search(rf"^partition 0 \(slot {slot_of(keys.input)}, [1-9]\d* keys\) moved from "
                             rf"127.0.0.1:{source.port} to 127.0.0.1:{target.port}$", out, re.MULTILINE), out
            # Every node's TimeSeries told the new shape (TS.MRANGE's fan-out).
            assert f"TIMESERIES.REFRESHCLUSTER run on {CLUSTER_SHARDS} node(s)" in out
            client.nodes_manager.initialize()
            assert client.get_node_from_key(keys.input).port == target.port
            wait_until(lambda: pipeline_drained(client, settings), 60, "every stage to commit all its input")
            assert check_commit_logs(client, settings) > 0
            assert _moved_replies(source.port) > moved_before, "no agent was sent to the new master"
            # Back where it was, so that the partitions stay evenly placed for the next tests.
            assert main(["cluster", "move", "--partition", "0", "--to", f"127.0.0.1:{source.port}"]) == 0
            assert all(p.poll() is None for p in started), log.read_text()[-2000:]
    finally:
        stop_all(started)
    check_against_model(settings)


def _cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """``fraud`` commands run in the test (``main``) on the cluster's node the agents use."""
    monkeypatch.setenv("FRAUD_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("FRAUD_HOME", str(settings.home))


def test_cluster_move_refuses_what_it_cannot_do_and_leaves_a_placed_partition(
        cluster: LocalCluster, cluster_settings: Settings, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _cli_env(monkeypatch, cluster_settings)
    with RedisCluster.from_url(cluster.urls[0]) as admin:
        home = admin.get_node_from_key("{3}").port
    assert main(["cluster", "move", "--partition", "3", "--to", f"127.0.0.1:{home}"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"partition 3 (slot {slot_of(b'3')}) is already on 127.0.0.1:{home}",
        f"TIMESERIES.REFRESHCLUSTER run on {CLUSTER_SHARDS} node(s)"]
    assert main(["cluster", "move", "--partition", "3", "--to", "127.0.0.1:1"]) == 1
    assert capsys.readouterr().err.startswith("fraud: error: 127.0.0.1:1 is not a master of this cluster: its "
                                              "masters are 127.0.0.1:")
    assert main(["cluster", "move", "--partition", "8", "--to", f"127.0.0.1:{home}"]) == 1
    assert capsys.readouterr().err == "fraud: error: no partition 8: FRAUD_PARTITIONS is 8\n"


def xadd_all_in_thread(settings: Settings, clicks: list[list[str]]) -> threading.Thread:
    """The router keeps routing into the moving partition: clicks are sent while the slot moves."""
    sender = threading.Thread(target=xadd_all, args=(settings, clicks))
    sender.start()
    return sender


def _moved_replies(port: int) -> int:
    """How many MOVED replies the node has given: the agents' stale maps corrected."""
    with redis.Redis(port=port) as node:
        return int(node.info("errorstats").get("errorstat_MOVED", {}).get("count", 0))


def test_bench_on_a_cluster_reports_each_masters_share(cluster: LocalCluster, cluster_settings: Settings,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """``fraud bench`` against one node of the cluster reads every master's INFO cpu: each master's
    Redis CPU per click and share, summing to the total it reports."""
    monkeypatch.setenv("FRAUD_REDIS_URL", cluster_settings.redis_url)
    monkeypatch.setenv("FRAUD_HOME", str(cluster_settings.home))
    assert main(["bench", "--use-running", "--clicks", "3000", "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["finished"]["router"] == 3000
    shards = report["redis_shards"]
    assert set(shards) == {f"{s.host}:{s.port}" for s in cluster.servers}, shards
    assert all(row["share_pct"] > 0 for row in shards.values()), shards
    assert abs(sum(row["share_pct"] for row in shards.values()) - 100) < 0.5, shards
    total = sum(row["cpu_us_per_click"] for row in shards.values())
    assert abs(total - report["cpu_us_per_click"]["redis"]) <= 0.2, (total, report["cpu_us_per_click"])
