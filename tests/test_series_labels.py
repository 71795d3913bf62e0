"""Every series the pipeline makes carries its namespace as a label, so a label filter finds one
namespace's series only; series made before the label existed get it on the next start."""

from __future__ import annotations

from dataclasses import replace

import redis

from agents.aggregator import ensure_verdict_series
from pipeline.client.connection import open_fast_client, open_redis
from pipeline.core.keys import VERDICTS, Keys
from pipeline.core.settings import Settings
from pipeline.ops.monitor import HealthRecorder
from pipeline.ops.reprocess import reprocess
from tests.helpers import run_pipeline, xadd_all


def labels(settings: Settings, key: str) -> dict[str, str]:
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        return dict(client.execute_command("TS.INFO", key)["labels"])


def query(client: redis.Redis, *filters: str) -> set[str]:
    return {k.decode() for k in client.execute_command("TS.QUERYINDEX", *filters)}


async def test_series_of_live_replay_and_monitor_carry_their_namespace(settings: Settings) -> None:
    settings = replace(settings, namespace="fraud")
    keys = Keys(settings.namespace)
    xadd_all(settings, [["device_id", f"d{i}", "ip", "192.0.2.1", "ts", str(1_700_000_000_000 + i)]
                        for i in range(5)])
    await run_pipeline(settings)
    await reprocess(settings, "whatif", "-", "+")
    monitor_client = await open_redis(settings)
    try:
        await HealthRecorder(monitor_client, settings).record([("lag", "detector", 0)])
    finally:
        await monitor_client.aclose()
    replay = keys.replay("whatif")
    parts, replay_parts = keys.partitions(settings.partitions), replay.partitions(settings.partitions)
    with redis.Redis.from_url(settings.redis_url) as client:
        # One series per partition and verdict, each labelled with both.
        live = {p.series(v) for p in parts for v in VERDICTS}
        aside = {p.series(v) for p in replay_parts for v in VERDICTS}
        assert query(client, "namespace=fraud", "metric=clicks", "tier=raw") == live
        assert query(client, "namespace=fraud:replay:whatif", "metric=clicks", "tier=raw") == aside
        assert query(client, "metric=clicks", "tier=raw") == live | aside, "without the label they mix"
        assert query(client, "namespace=fraud", "metric=clicks", "tier=rollup") == {
            p.rollup(v) for p in parts for v in VERDICTS}
        assert query(client, "namespace=fraud", "metric=clicks", "partition=3", "verdict=clean") == {
            keys.partition(3).series("clean"), keys.partition(3).rollup("clean")}
        assert query(client, "namespace=fraud", "metric=pipeline_health") == {
            keys.health_series("lag", "detector")}


async def test_series_made_without_the_label_get_it_on_the_next_start(settings: Settings) -> None:
    keys = Keys(settings.namespace)
    part = keys.partition(2)
    with redis.Redis.from_url(settings.redis_url) as client:
        # As an older version made them: no namespace (nor partition) label; one holds counts already.
        for verdict in VERDICTS:
            for key, tier in ((part.series(verdict), "raw"), (part.rollup(verdict), "rollup")):
                client.execute_command("TS.CREATE", key, "DUPLICATE_POLICY", "SUM", "LABELS", "metric", "clicks",
                                       "verdict", verdict, "tier", tier)
        client.execute_command("TS.ADD", part.series("clean"), 1_000, 4)
        old_health = keys.health_series("lag", "detector")
        client.execute_command("TS.CREATE", old_health, "LABELS", "metric", "pipeline_health", "measure", "lag",
                               "stage", "detector")
    fast = await open_fast_client(settings)
    try:
        await ensure_verdict_series(fast, keys, part, settings)
    finally:
        await fast.close()
    monitor_client = await open_redis(settings)
    try:
        await HealthRecorder(monitor_client, settings).create("lag", "detector")
    finally:
        await monitor_client.aclose()
    with redis.Redis.from_url(settings.redis_url) as client:
        for verdict in VERDICTS:
            assert labels(settings, part.series(verdict)) == {
                "namespace": "clicks", "partition": "2", "metric": "clicks", "verdict": verdict, "tier": "raw"}
            assert labels(settings, part.rollup(verdict))["partition"] == "2"
        assert client.execute_command("TS.RANGE", part.series("clean"), "-", "+") == [[1_000, 4.0]]
        assert labels(settings, old_health) == {"namespace": "clicks", "metric": "pipeline_health",
                                              "measure": "lag", "stage": "detector"}
