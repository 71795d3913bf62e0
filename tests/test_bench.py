"""fraud bench reports its figures (the figures themselves are for the closing note, not a test)."""

from __future__ import annotations

import orjson
import pytest

from pipeline.cli.main import main
from pipeline.core.settings import Settings


def test_bench_pushes_every_click_through_and_reports(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FRAUD_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("FRAUD_HOME", str(settings.home))
    assert main(["bench", "--use-running", "--clicks", "3000", "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["clicks"] == 3000
    assert report["clicks_per_s"] > 0
    assert 0 <= report["latency_ms_p50"] <= report["latency_ms_p99"]
    assert set(report["cpu_us_per_click"]) == {"router-0", "detector-0", "detector-1", "aggregator-0", "producer",
                                               "redis"}
    assert (report["partitions"], report["direct"], report["routers"]) == (settings.partitions, False, 1)
    assert report["finished"]["router"] == 3000
    assert report["persistence"] == "AOF appendfsync everysec"  # as the suite's server runs
    verdicts = report["verdicts"]
    accepted = sum(verdicts.get(v, 0) for v in ("clean", "ip_blacklist", "click_spam"))
    # Every click has one outcome, and every verdict was counted.
    assert accepted + verdicts.get("duplicate", 0) + verdicts.get("dead", 0) == 3000
    assert report["counted"] == accepted


def test_bench_direct_writes_into_the_partitions_without_a_router(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FRAUD_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("FRAUD_HOME", str(settings.home))
    assert main(["bench", "--use-running", "--clicks", "3000", "--detectors", "1", "--direct", "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert set(report["cpu_us_per_click"]) == {"detector-0", "aggregator-0", "producer", "redis"}
    assert (report["direct"], report["routers"]) == (True, 0)
    # Nothing went through clicks:raw, and every click still has one outcome.
    assert report["finished"] == {"router": 0, "detector": 3000, "aggregator": report["counted"]}
