"""The soak's core on a small run: retention really bounds what Redis holds."""

from __future__ import annotations

import dataclasses

import redis

from pipeline.core.keys import VERDICTS, Keys
from pipeline.core.partitions import partition_of
from pipeline.core.settings import Settings
from pipeline.dev.soak import soak
from tests.arrival import xadd_arrived
from tests.helpers import run_burst

CLICKS = 30_000
HORIZON_MS, WINDOW_MS, FUTURE_MS = 2000, 1000, 500
# Shorter still than the soak's defaults, so that windows can go within the test.
ENV = {
    "FRAUD_STREAM_KEEP_MS": "1000",
    "FRAUD_CLICK_SPAM_WINDOW_MS": str(WINDOW_MS),
    "FRAUD_DEDUP_HORIZON_MS": str(HORIZON_MS),
    "FRAUD_MAX_FUTURE_MS": str(FUTURE_MS),
    "FRAUD_MAINTENANCE_INTERVAL_MS": "500",
    # A device's state (window and trail) goes once no rule can look back at it: lookbacks within the window.
    "FRAUD_ROBOTIC_LOOKBACK_MS": str(WINDOW_MS),
    "FRAUD_TRAVEL_LOOKBACK_MS": str(WINDOW_MS),
}
# Arrival time after which no click can look back at a device's window: it is removed.
FORGOTTEN_AFTER_MS = 2 * HORIZON_MS + WINDOW_MS + FUTURE_MS


def window_keys(settings: Settings) -> int:
    with redis.Redis.from_url(settings.redis_url) as client:
        return sum(1 for part in Keys(settings.namespace).partitions(settings.partitions)
                   for _ in client.scan_iter(match=part.window_prefix + "*", count=10_000))


def newcomer_of_each_partition(partitions: int) -> list[str]:
    """A device id of each partition: a click of each reaches every partition's detector step."""
    found: dict[int, str] = {}
    for n in range(100 * partitions):
        found.setdefault(partition_of(f"newcomer-{n}", partitions), f"newcomer-{n}")
        if len(found) == partitions:
            return [found[p] for p in range(partitions)]
    raise AssertionError("no device id found for some partition")


def longest_per_partition(settings: Settings, stream: str) -> int:
    with redis.Redis.from_url(settings.redis_url) as client:
        parts = Keys(settings.namespace).partitions(settings.partitions)
        return max(client.xlen(getattr(part, stream)) for part in parts)


async def test_streams_are_trimmed_and_windows_expire(settings: Settings) -> None:
    result = await soak(settings, CLICKS, 15_000, env=ENV, settle_s=5.0, timeout=120)
    stats = result.stats
    decided = sum(stats.get(f"detector.{k}", 0) for k in (*VERDICTS, "duplicate", "dead"))
    assert decided == CLICKS, stats
    assert stats["aggregator.counted"] == CLICKS - stats.get("detector.duplicate", 0) - stats.get("detector.dead", 0)
    assert max(s.raw_len for s in result.samples) > 1000, "the streams never held much: nothing was tested"
    # Approximate trimming keeps at most a partly committed node of 100 entries per stream.
    assert result.stream_lengths["raw"] <= 200, result.stream_lengths
    assert longest_per_partition(settings, "input") <= 200, result.stream_lengths
    assert longest_per_partition(settings, "verdicts") <= 200, result.stream_lengths
    assert result.end_memory < max(s.used_memory for s in result.samples)

    # Windows go by arrival time, not the wall clock: once clicks keep arriving long enough after
    # the run, every window of the run goes, and only the newcomers' are left (one per partition:
    # a partition's windows go in its own detector steps).
    assert result.window_keys > 0
    with redis.Redis.from_url(settings.redis_url) as client:
        last_ms = int(client.xinfo_stream(Keys(settings.namespace).raw)["last-generated-id"].split(b"-")[0])
    later = last_ms + FORGOTTEN_AFTER_MS + 1
    run_settings = dataclasses.replace(settings, dedup_horizon_ms=HORIZON_MS, click_spam_window_ms=WINDOW_MS,
                                       max_future_ms=FUTURE_MS, robotic_lookback_ms=WINDOW_MS,
                                       travel_lookback_ms=WINDOW_MS)
    # Each detector call removes at most twice a batch of quiet windows: one call per click here.
    calls = result.window_keys // (2 * run_settings.batch_size) + 1
    newcomers = newcomer_of_each_partition(settings.partitions)
    for _ in range(calls):
        xadd_arrived(settings, [(later, ["device_id", device, "ip", "192.0.2.1"]) for device in newcomers])
        await run_burst(run_settings, "router")
        await run_burst(run_settings, "detector")
    assert window_keys(settings) == settings.partitions, \
        "device windows outlived every click that could look back at them"
