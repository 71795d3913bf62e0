"""Checks of the partitions' records, shared by the partition and fault tests."""

from __future__ import annotations

import ipaddress
import time

from agents.generator import blacklisted_ips, traffic
from pipeline.core.settings import Settings
from tests.accounting import Outcomes, check_exactly_once
from tests.rule_model import RuleModel


def labelled_trace(seed: int, count: int, step_ms: int = 5) -> list[list[str]]:
    """A seeded trace of the generator's labelled traffic (humans, bot bursts, blacklisted addresses,
    retries, malformed clicks) over simulated event time ending 30 s before now: sent faster than
    real time, each click's ts stays inside the accepted range around its arrival."""
    start = int(time.time() * 1000) - 30_000 - count * step_ms
    ticks = iter(range(start, start + 10 * count * step_ms, step_ms))
    clicks = traffic(seed, lambda: next(ticks))
    return [next(clicks)[0] for _ in range(count)]


def model_for(settings: Settings, listed: list[str]) -> RuleModel:
    """The sequential model with the settings' rules and thresholds, and these addresses listed."""
    return RuleModel(
        window_ms=settings.click_spam_window_ms, threshold=settings.click_spam_threshold,
        horizon_ms=settings.dedup_horizon_ms, max_future_ms=settings.max_future_ms,
        max_fields=settings.max_field_count, max_bytes=settings.max_field_bytes,
        blacklist=frozenset(ipaddress.ip_address(ip) for ip in listed), rules=settings.rule_names,
        robotic_intervals=settings.robotic_intervals, robotic_min_intervals=settings.robotic_min_intervals,
        robotic_spread_permille=settings.robotic_spread_permille, robotic_lookback_ms=settings.robotic_lookback_ms,
        travel_max_kmh=settings.travel_max_kmh, travel_min_km=settings.travel_min_km,
        travel_lookback_ms=settings.travel_lookback_ms)


def model_outcomes(settings: Settings, raw: list[tuple[bytes, list[bytes]]]) -> dict[bytes, str]:
    """raw id -> the sequential model's outcome (verdict, 'duplicate' or a dead letter's reason code)."""
    model = model_for(settings, blacklisted_ips())
    return {entry_id: model.outcome(entry_id.decode(), flat) for entry_id, flat in raw}


def pipeline_outcomes(out: Outcomes) -> dict[bytes, str]:
    """raw id -> what the pipeline gave it: its verdict, 'duplicate', or its dead letter's reason code."""
    given = {raw_id: v[b"verdict"].decode() for raw_id, v in out.verdicts.items()}
    given |= {raw_id: d[b"reason"].decode().split(":", 1)[0] for raw_id, d in out.dead.items()}
    given |= dict.fromkeys(out.duplicates, "duplicate")
    return given


def check_against_model(settings: Settings) -> Outcomes:
    """Exactly one outcome per click, counts that add up, and every outcome the model's."""
    out = check_exactly_once(settings)
    expected = model_outcomes(settings, out.raw)
    given = pipeline_outcomes(out)
    wrong = [(i, expected[i], given.get(i)) for i in expected if given.get(i) != expected[i]]
    assert not wrong, f"{len(wrong)} of {len(expected)} outcomes differ from the model, e.g. {wrong[:5]}"
    return out
