"""The soak's core on a small run: retention really bounds what Redis holds."""

from __future__ import annotations

from pipeline.core.settings import Settings
from pipeline.dev.soak import soak

CLICKS = 30_000
# Shorter still than the soak's defaults, so that windows expire within the test.
ENV = {
    "FRAUD_STREAM_KEEP_MS": "1000",
    "FRAUD_CLICK_SPAM_WINDOW_MS": "1000",
    "FRAUD_DEDUP_HORIZON_MS": "2000",
    "FRAUD_MAINTENANCE_INTERVAL_MS": "500",
}


async def test_streams_are_trimmed_and_windows_expire(settings: Settings) -> None:
    # A quiet device's window lives between one and two horizons: wait out two.
    result = await soak(settings, CLICKS, 15_000, env=ENV, settle_s=5.0, timeout=120)
    stats = result.stats
    decided = sum(stats.get(f"detector.{k}", 0) for k in ("clean", "ip_blacklist", "click_spam", "duplicate", "dead"))
    assert decided == CLICKS, stats
    assert stats["aggregator.counted"] == CLICKS - stats.get("detector.duplicate", 0) - stats.get("detector.dead", 0)
    assert max(s.raw_len for s in result.samples) > 1000, "the streams never held much: nothing was tested"
    # Approximate trimming keeps at most a partly acknowledged node of 100 entries per stream.
    assert result.stream_lengths["raw"] <= 200, result.stream_lengths
    assert result.stream_lengths["verdicts"] <= 200, result.stream_lengths
    assert result.window_keys == 0, "device windows outlived twice the de-duplication horizon"
    assert result.end_memory < max(s.used_memory for s in result.samples)
