"""Counts, the dashboard's panels, the offenders and ``fraud status`` on the shared 3-master cluster.

The Grafana plugin sends each panel's command to whichever node its first argument hashes to (no
fan-out of its own), so every ``TS.MRANGE`` panel command is sent here to EVERY master, and each
must answer the exact global counts: the sum over the partitions' series equals the verdict
streams' counts, per verdict and per bucket. RedisTimeSeries fans the query out over the shards
because ``fraud setup`` (and ``fraud cluster start``) ran ``TIMESERIES.REFRESHCLUSTER`` on every
master (pipeline/ops/timeseries_cluster.py says what happens without it).
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections import Counter
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from redis.cluster import RedisCluster

from pipeline.cli.main import build_parser
from pipeline.client.connection import open_fast_client
from pipeline.core.keys import OFFENDER_DIMENSIONS, Keys
from pipeline.core.partitions import partition_of
from pipeline.core.settings import Settings
from pipeline.dev.cluster import LocalCluster
from pipeline.ops.offenders import FLAGGED, offenders_argv, read_offenders
from pipeline.ops.setup import set_up
from pipeline.ops.timeseries_cluster import itself, refresh_stale, shards_seen
from tests.conftest import CLUSTER_SHARDS
from tests.helpers import run_pipeline, xadd_all
from tests.plugin_replies import plugin_frames
from tests.test_grafana_dashboard import FRAUD, dashboard_range, panel_range, plugin_command, sent_target, targets

SECOND_MS, MINUTE_MS = 1_000, 60_000


def clicks(now_ms: int) -> list[list[str]]:
    """Clean clicks from 60 devices, and 12 devices each sending 5 clicks within a second (the last
    ones click_spam), over the last few minutes: every partition gets clean and flagged clicks."""
    out = [["device_id", f"c{n}", "ip", f"10.1.{n % 5}.1", "ts", str(now_ms - 4 * MINUTE_MS + n * 3 * SECOND_MS)]
           for n in range(60)]
    for n in range(12):
        at = now_ms - 3 * MINUTE_MS + n * 7 * SECOND_MS
        out += [["device_id", f"s{n}", "ip", f"10.2.{n % 3}.1", "ts", str(at + k)] for k in range(5)]
    return out


def verdicts(settings: Settings) -> list[dict[str, str]]:
    with RedisCluster.from_url(settings.redis_url, decode_responses=True) as client:
        return [fields for part in Keys(settings.namespace).partitions(settings.partitions)
                for _, fields in client.xrange(part.verdicts)]


@pytest.fixture
async def fed(cluster: LocalCluster, cluster_settings: Settings) -> list[dict[str, str]]:
    """The pipeline set up as an admin does, then the clicks through router, detector and
    aggregator: the verdicts, read back from every partition's stream."""
    done = await set_up(cluster_settings)
    assert f"RedisTimeSeries cluster view refreshed on {CLUSTER_SHARDS} masters" in done
    xadd_all(cluster_settings, clicks(int(time.time() * 1000)))
    await run_pipeline(cluster_settings)
    found = verdicts(cluster_settings)
    assert len(found) == 60 + 12 * 5
    assert {f["verdict"] for f in found} == {"clean", "click_spam"}
    return found


def masters(cluster: LocalCluster) -> list[redis.Redis]:
    # RESP2, as the plugin's client (radix v3) speaks; one plain client per node: no routing of ours.
    return [redis.Redis.from_url(url, decode_responses=True, protocol=2) for url in cluster.urls]


def expected_cells(found: list[dict[str, str]], bucket_ms: int) -> dict[str, dict[int, float]]:
    cells: dict[str, Counter[int]] = {}
    for fields in found:
        ts = int(fields["ts"])
        cells.setdefault(fields["verdict"], Counter())[ts - ts % bucket_ms] += 1
    return {verdict: {t: float(n) for t, n in counter.items()} for verdict, counter in cells.items()}


def shown(reply: Any, target: dict[str, Any], from_ms: int, to_ms: int) -> dict[str, dict[int, float]]:
    """The plugin's frames of a TS.MRANGE reply: verdict -> {bucket: value}, zero buckets left out."""
    series = {}
    for frame in plugin_frames(sent_target(target, from_ms, to_ms), reply):
        values = dict(zip(frame.fields[0].values, frame.fields[1].values, strict=True))
        series[frame.name] = {t: v for t, v in values.items() if v}
    return {name: values for name, values in series.items() if values}


async def test_every_count_panel_gives_exact_global_counts_on_every_master(
        cluster: LocalCluster, cluster_settings: Settings, fed: list[dict[str, str]]) -> None:
    now_ms = int(time.time() * 1000)
    counted = [(p, t) for p, t in targets(FRAUD) if "metric=clicks" in t.get("filter", "")]
    assert len(counted) >= 3
    nodes = masters(cluster)
    try:
        for p, target in counted:
            from_ms, to_ms = panel_range(p, *dashboard_range(FRAUD, now_ms))
            command = plugin_command(target, from_ms, to_ms, {"namespace": cluster_settings.namespace})
            replies = [node.execute_command(*command) for node in nodes]
            answers = [shown(reply, target, from_ms, to_ms) for reply in replies]
            assert all(a == answers[0] for a in answers), (p["title"], "the masters disagree")
            if "tier=raw" in target["filter"]:
                assert answers[0] == expected_cells(fed, target["bucket"]), p["title"]
            # Every partition's series of each verdict, from every shard, went into the sum.
            sources = {label: value for _, labels, _ in replies[0] for label, value in labels}
            assert sources, p["title"]
    finally:
        for node in nodes:
            node.close()


async def test_the_cluster_view_of_every_master_is_current(cluster: LocalCluster,
                                                           cluster_settings: Settings) -> None:
    """What the monitor checks each tick: every master's RedisTimeSeries knows the three masters,
    each as it runs now (its node id and the module's run id)."""
    views = []
    for url in cluster.urls:
        with redis.Redis.from_url(url) as node:
            views.append(node.execute_command("TIMESERIES.INFOCLUSTER"))
    running = {itself(view) for view in views}
    assert len(running) == CLUSTER_SHARDS and [shards_seen(view) for view in views] == [running] * CLUSTER_SHARDS
    client = aioredis.RedisCluster.from_url(cluster_settings.redis_url, decode_responses=True)
    try:
        assert await refresh_stale(client) == []
    finally:
        await client.aclose()


def exact_offenders(found: list[dict[str, str]], dimension: str) -> dict[str, dict[str, int]]:
    out: dict[str, Counter[str]] = {}
    for fields in found:
        if fields["verdict"] in FLAGGED:
            out.setdefault(fields[dimension], Counter())[fields["verdict"]] += 1
    return {member: {v: counts[v] for v in FLAGGED} for member, counts in out.items()}


def as_counts(rows: list[dict[str, Any]], dimension: str) -> dict[str, dict[str, int]]:
    assert all(r["flagged clicks"] == sum(r[v] for v in FLAGGED) for r in rows)
    return {r[dimension]: {v: r[v] for v in FLAGGED} for r in rows}


async def test_offenders_read_per_partition_and_merged_for_the_dashboard(
        cluster: LocalCluster, cluster_settings: Settings, fed: list[dict[str, str]]) -> None:
    settings = cluster_settings
    keys = Keys(settings.namespace)
    from_ms, to_ms = dashboard_range(FRAUD, int(time.time() * 1000))
    # One call over every partition's buckets, as on one server: the cluster refuses it.
    every = [part.offenders_prefix for part in keys.partitions(settings.partitions)]
    with RedisCluster.from_url(settings.redis_url) as client, pytest.raises(redis.RedisClusterException):
        client.execute_command(*offenders_argv(settings, every, "ip", from_ms, to_ms, 10))
    # The operators' read: one call per partition, added up.
    client = await open_fast_client(settings)
    try:
        for dimension in OFFENDER_DIMENSIONS:
            rows = await read_offenders(client, settings, dimension, from_ms, to_ms, 1_000, settings.partitions)
            assert as_counts(rows, dimension) == exact_offenders(fed, dimension), dimension
            assert [r[dimension] for r in rows] == sorted(
                (r[dimension] for r in rows), key=lambda m: (-sum(exact_offenders(fed, dimension)[m].values()), m))
    finally:
        await client.close()
    # The dashboard's read: one tick of the real monitor merges the partitions' buckets into one
    # slot; the panel's command (one key) answers on that slot's master, and MOVED elsewhere,
    # which the plugin's cluster client follows.
    await monitor_tick(settings)
    with RedisCluster.from_url(settings.redis_url) as client:
        home = client.get_node_from_key(keys.merged_offenders_prefix).port
    for title, dimension in (("Top offending devices", "device_id"), ("Top offending IPs", "ip")):
        (target,) = next(p for p in FRAUD["panels"] if p["title"] == title)["targets"]
        command = plugin_command(target, from_ms, to_ms, {"namespace": settings.namespace})
        expected = exact_offenders(fed, dimension)
        top = sorted(expected, key=lambda m: (-sum(expected[m].values()), m))[:10]
        for server, node in zip(cluster.servers, masters(cluster), strict=True):
            with node:
                if server.port != home:
                    with pytest.raises(redis.exceptions.MovedError):
                        node.execute_command(*command)
                    continue
                rows = [json.loads(row) for row in node.execute_command(*command)]
            assert as_counts(rows, dimension) == {m: expected[m] for m in top}, title
            assert [r[dimension] for r in rows] == top, "heaviest first, ties by name"


async def status_document(settings: Settings) -> dict[str, Any]:
    """``fraud status --json``'s document, through the real CLI's parser."""
    args = build_parser().parse_args(["status", "--json", "--interval", "0"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert await args.run(args, settings) == 0
    return dict(orjson.loads(out.getvalue()))


async def status(settings: Settings, *options: str) -> int:
    """``fraud status`` through the real CLI's parser (in this test's event loop)."""
    args = build_parser().parse_args(["status", "--interval", "0", *options])
    return int(await args.run(args, settings))


async def test_status_shows_every_shard_and_its_partitions(cluster: LocalCluster, cluster_settings: Settings,
                                                           fed: list[dict[str, str]],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert await status(cluster_settings, "--json") == 0
    snap = orjson.loads(capsys.readouterr().out)
    shards = snap["shards"]
    assert {s["address"] for s in shards} == {f"127.0.0.1:{s.port}" for s in cluster.servers}
    assert all(s["role"] == "master" and s["state"] == "ok" and s["used_memory"] > 0 for s in shards), shards
    assert all(s["ops_per_sec"] >= 0 for s in shards)
    served = sorted(p for s in shards for p in s["partitions"])
    assert served == list(range(cluster_settings.partitions)), shards
    assert sorted(len(s["partitions"]) for s in shards) == [2, 3, 3]
    with RedisCluster.from_url(cluster_settings.redis_url) as client:
        for s in shards:
            for p in s["partitions"]:
                node = client.get_node_from_key(f"{{{p}}}")
                assert s["address"] == f"{node.host}:{node.port}"
    # The table too: a SHARD section, one row per master, beside the per-partition table.
    assert await status(cluster_settings) == 0
    out = capsys.readouterr().out
    assert out.count("  master  ok  ") == CLUSTER_SHARDS and "PARTITION" in out


def global_counts(url: str, namespace: str) -> dict[str, float]:
    """Every verdict's clicks over all time, summed over the partitions by the node asked."""
    with redis.Redis.from_url(url, decode_responses=True, protocol=2, socket_timeout=30) as node:
        reply = node.execute_command("TS.MRANGE", "-", "+", "AGGREGATION", "sum", 10**13, "FILTER",
                                     f"namespace={namespace}", "metric=clicks", "tier=raw",
                                     "GROUPBY", "verdict", "REDUCE", "sum")
    return {name.split("=", 1)[1]: sum(float(v) for _, v in samples) for name, _, samples in reply
            if any(float(v) for _, v in samples)}


async def monitor_tick(settings: Settings) -> None:
    args = build_parser().parse_args(["agent", "monitor", "--interval", "0.05", "--once"])
    assert await args.run(args, settings) == 0


async def test_a_restarted_master_counts_alone_until_the_monitor_refreshes_the_views(
        cluster: LocalCluster, cluster_settings: Settings, fed: list[dict[str, str]]) -> None:
    """A master restarted (SIGTERM, started again: the same node, a new run id) has no view of the
    cluster: it silently counts its own shard only; the others still fan out to its old run and
    fail. One monitor tick refreshes them all, and a current view is not refreshed again."""
    settings = cluster_settings
    restarted = cluster.servers[2]
    restarted.stop()
    restarted.start()
    cluster.wait_ok(30)
    with RedisCluster.from_url(settings.redis_url) as client:
        own = {p for p in range(settings.partitions) if client.get_node_from_key(f"{{{p}}}").port == restarted.port}
    assert own, "the restarted master serves partitions"
    alone = Counter(f["verdict"] for f in fed if partition_of(f["device_id"], settings.partitions) in own)
    assert global_counts(restarted.url, settings.namespace) == alone
    with pytest.raises(redis.ResponseError, match="multi-shard command failed"):
        global_counts(cluster.urls[0], settings.namespace)
    await monitor_tick(settings)
    everything = Counter(f["verdict"] for f in fed)
    for url in cluster.urls:
        assert global_counts(url, settings.namespace) == everything, url
    client = aioredis.RedisCluster.from_url(settings.redis_url, decode_responses=True)
    try:
        assert await refresh_stale(client) == []
    finally:
        await client.aclose()
