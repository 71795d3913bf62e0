"""The monitor agent against a live server: series, labels, and values equal to XINFO's."""

from __future__ import annotations

from typing import Any

import redis

from pipeline.cli.main import build_parser
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from tests.helpers import run_burst, xadd_all
from tests.test_status import MISSING_DEVICE, clicks


async def monitor_once(settings: Settings) -> int:
    # Through the real command line, on this test's loop (the agent installs signal handlers).
    args = build_parser().parse_args(["agent", "monitor", "--interval", "0.2", "--once"])
    return int(await args.run(args, settings))


def labels(client: redis.Redis, key: str) -> dict[str, str]:
    return dict(client.execute_command("TS.INFO", key)["labels"])


def last_value(client: redis.Redis, key: str) -> float:
    return float(client.execute_command("TS.GET", key)[1])


async def half_done_pipeline(settings: Settings) -> None:
    """Detector behind by 4 clicks; aggregator holding 2 verdicts unacknowledged, 4 unread; 1 dead letter."""
    keys = Keys(settings.namespace)
    xadd_all(settings, [*clicks(6), MISSING_DEVICE])
    await run_burst(settings, "detector")
    xadd_all(settings, clicks(4, first=6))
    with redis.Redis.from_url(settings.redis_url) as client:
        client.xgroup_create(keys.verdicts, "aggregator", "0")
        client.xreadgroup("aggregator", "slow", {keys.verdicts: ">"}, count=2)


async def test_once_records_health_series_with_the_dashboard_labels(settings: Settings) -> None:
    keys = Keys(settings.namespace)
    await half_done_pipeline(settings)
    assert await monitor_once(settings) == 0

    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        lag_keys = client.execute_command("TS.QUERYINDEX", "metric=pipeline_health", "measure=lag")
        assert sorted(lag_keys) == sorted([keys.health_series("lag", "detector"),
                                           keys.health_series("lag", "aggregator")])
        everything = client.execute_command("TS.QUERYINDEX", "metric=pipeline_health")
        expected: dict[str, tuple[str, str]] = {
            keys.health_series(measure, stage): (measure, stage)
            for measure in ("lag", "pending", "throughput") for stage in ("detector", "aggregator")}
        expected[keys.health_series("dead_letters", "dead")] = ("dead_letters", "dead")
        assert sorted(everything) == sorted(expected)
        for key, (measure, stage) in expected.items():
            assert labels(client, key) == {"namespace": settings.namespace, "metric": "pipeline_health",
                                           "measure": measure, "stage": stage}
        info: Any = client.execute_command("TS.INFO", keys.health_series("lag", "detector"))
        assert info["retentionTime"] == settings.series_retention_ms
        assert str(info["duplicatePolicy"]).lower() == "last"

        groups = {g["name"]: g for stream in (keys.raw, keys.verdicts) for g in client.xinfo_groups(stream)}
        assert {(g["lag"], g["pending"]) for g in groups.values()} == {(4, 0), (4, 2)}
        for stage, group in groups.items():
            assert last_value(client, keys.health_series("lag", stage)) == group["lag"]
            assert last_value(client, keys.health_series("pending", stage)) == group["pending"]
        assert last_value(client, keys.health_series("dead_letters", "dead")) == client.xlen(keys.dead) == 1
        # Nothing was processed during the monitor's interval.
        for stage in ("detector", "aggregator"):
            assert last_value(client, keys.health_series("throughput", stage)) == 0


async def test_series_that_vanished_are_made_again(settings: Settings) -> None:
    keys = Keys(settings.namespace)
    await half_done_pipeline(settings)
    assert await monitor_once(settings) == 0
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        for key in client.execute_command("TS.QUERYINDEX", "metric=pipeline_health"):
            client.delete(key)
    await run_burst(settings, "detector")
    assert await monitor_once(settings) == 0
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        assert last_value(client, keys.health_series("lag", "detector")) == 0
        assert labels(client, keys.health_series("lag", "detector"))["measure"] == "lag"


async def test_no_group_no_lag_series(settings: Settings) -> None:
    xadd_all(settings, clicks(3))
    assert await monitor_once(settings) == 0
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        assert client.execute_command("TS.QUERYINDEX", "metric=pipeline_health", "measure=lag") == []
        dead = Keys(settings.namespace).health_series("dead_letters", "dead")
        assert last_value(client, dead) == 0
