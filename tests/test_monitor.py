"""The monitor agent against a live server: series, labels, and values equal to XINFO's summed over partitions."""

from __future__ import annotations

from typing import Any

import redis

from agents.pipeline import PIPELINE
from pipeline.cli.main import build_parser
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.ops.setup import set_up
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


STAGES = ("router", "detector", "aggregator")


async def half_done_pipeline(settings: Settings) -> None:
    """Router behind by 4 clicks, detector done, aggregator not started (6 verdicts to count); 1 dead letter."""
    await set_up(settings)
    xadd_all(settings, [*clicks(6), MISSING_DEVICE])
    await run_burst(settings, "router")
    await run_burst(settings, "detector")
    xadd_all(settings, clicks(4, first=6))


def xinfo_totals(client: redis.Redis, settings: Settings, stage_name: str) -> tuple[int, int]:
    """(lag, pending) of a stage's group summed over its inputs, straight from XINFO GROUPS."""
    keys = Keys(settings.namespace)
    stage = next(s for s in PIPELINE if s.name == stage_name)
    figures = [next((g["lag"], g["pending"]) for g in client.xinfo_groups(stage.input_stream(keys, unit))
                    if g["name"] == stage.name) for unit in stage.units(settings)]
    return sum(lag for lag, _ in figures), sum(pending for _, pending in figures)


async def test_once_records_health_series_with_the_dashboard_labels(settings: Settings) -> None:
    keys = Keys(settings.namespace)
    await half_done_pipeline(settings)
    assert await monitor_once(settings) == 0

    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        lag_keys = client.execute_command("TS.QUERYINDEX", "metric=pipeline_health", "measure=lag")
        assert sorted(lag_keys) == sorted(keys.health_series("lag", stage) for stage in STAGES)
        everything = client.execute_command("TS.QUERYINDEX", "metric=pipeline_health")
        expected: dict[str, tuple[str, str]] = {
            keys.health_series(measure, stage): (measure, stage)
            for measure in ("lag", "pending", "throughput") for stage in STAGES}
        expected[keys.health_series("dead_letters", "dead")] = ("dead_letters", "dead")
        assert sorted(everything) == sorted(expected)
        for key, (measure, stage) in expected.items():
            assert labels(client, key) == {"namespace": settings.namespace, "metric": "pipeline_health",
                                           "measure": measure, "stage": stage}
        info: Any = client.execute_command("TS.INFO", keys.health_series("lag", "detector"))
        assert info["retentionTime"] == settings.series_retention_ms
        assert str(info["duplicatePolicy"]).lower() == "last"

        # Each stage's lag and pending: XINFO GROUPS summed over the stage's partitions.
        totals = {stage: xinfo_totals(client, settings, stage) for stage in STAGES}
        assert totals == {"router": (4, 0), "detector": (0, 0), "aggregator": (6, 0)}
        for stage, (lag, pending) in totals.items():
            assert last_value(client, keys.health_series("lag", stage)) == lag
            assert last_value(client, keys.health_series("pending", stage)) == pending
        dead = sum(client.xlen(part.dead) for part in keys.partitions(settings.partitions))
        assert last_value(client, keys.health_series("dead_letters", "dead")) == dead == 1
        # Nothing was processed during the monitor's interval.
        for stage in STAGES:
            assert last_value(client, keys.health_series("throughput", stage)) == 0


async def test_series_that_vanished_are_made_again(settings: Settings) -> None:
    keys = Keys(settings.namespace)
    await half_done_pipeline(settings)
    assert await monitor_once(settings) == 0
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        for key in client.execute_command("TS.QUERYINDEX", "metric=pipeline_health"):
            client.delete(key)
    await run_burst(settings, "router")
    assert await monitor_once(settings) == 0
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        assert last_value(client, keys.health_series("lag", "router")) == 0
        assert last_value(client, keys.health_series("lag", "detector")) == 4
        assert labels(client, keys.health_series("lag", "router"))["measure"] == "lag"


async def test_before_any_stage_ran_the_router_lag_is_the_raw_stream(settings: Settings) -> None:
    """No group yet: a stage will start at its input's beginning, so all of it is its lag."""
    xadd_all(settings, clicks(3))
    assert await monitor_once(settings) == 0
    keys = Keys(settings.namespace)
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        assert [last_value(client, keys.health_series("lag", stage)) for stage in STAGES] == [3, 0, 0]
        assert last_value(client, keys.health_series("dead_letters", "dead")) == 0
