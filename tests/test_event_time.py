"""Event time against arrival: hostile and careless producers cannot stall, corrupt or blind the pipeline.

Clicks are XADDed with explicit ids where the test needs to know their arrival (the id's ms part).
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import redis

from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from tests.accounting import as_dict, check_exactly_once
from tests.arrival import xadd_arrived
from tests.helpers import run_burst, run_pipeline, xadd_all
from tests.outputs import read_partitions
from tests.procs import wait_until
from tests.rule_model import RuleModel

A = 1_795_000_000_000
H, W, F = 300_000, 10_000, 60_000


def click(device: str, ts: int | None = None, tx: str | None = None) -> list[str]:
    fields = ["device_id", device, "ip", "192.0.2.10"]
    if ts is not None:
        fields += ["ts", str(ts)]
    if tx is not None:
        fields += ["transaction_id", tx]
    return fields


def outcomes(settings: Settings, ids: list[str]) -> list[str]:
    """Each entry's outcome: its verdict, its dead letter's reason code, or 'duplicate'."""
    out = check_exactly_once(settings)
    result = []
    for entry_id in (i.encode() for i in ids):
        if entry_id in out.verdicts:
            result.append(out.verdicts[entry_id][b"verdict"].decode())
        elif entry_id in out.dead:
            result.append(out.dead[entry_id][b"reason"].decode().split(":")[0])
        else:
            result.append("duplicate")
    return result


def modelled(settings: Settings, ids: list[str], arrived: list[tuple[int, list[str]]]) -> list[str]:
    """The sequential model's outcomes for the entries (ids as the server assigned them)."""
    model = RuleModel(settings.click_spam_window_ms, settings.click_spam_threshold, settings.dedup_horizon_ms,
                      settings.max_future_ms)
    return [model.outcome(entry_id, [f.encode() for f in fields]) for entry_id, (_, fields) in zip(ids, arrived,
                                                                                                   strict=True)]


async def test_clicks_outside_the_event_time_policy_are_dead_letters_and_series_sum_to_verdicts(
        settings: Settings) -> None:
    now = int(time.time() * 1000)
    ids = xadd_all(settings, [click("a"), click("b", now), click("c", 9007199254740991), click("d", 1),
                              click("e", 0), click("f", 10**40), click("g")])
    await run_pipeline(settings)
    # check_exactly_once (in outcomes) also asserts that every series sums to its verdicts.
    assert outcomes(settings, ids) == ["clean", "clean", "ts_in_future", "ts_too_old", "ts_too_old",
                                       "ts_in_future", "clean"]
    with redis.Redis.from_url(settings.redis_url) as client:
        reasons = [as_dict(flat)[b"reason"] for _, flat in read_partitions(client, settings, "dead")]
    assert any(r.startswith(b"ts_in_future: ts 9007199254740991 > arrival ") for r in reasons), reasons


async def test_a_far_future_burst_neither_trims_windows_nor_hides_a_retry(settings: Settings) -> None:
    arrived = [(A, click("d", A, tx="t1")), (A, click("d", A + 1, tx="t2"))]
    arrived += [(A, click("d", A + 10**9 + i)) for i in range(20)]  # dead letters
    arrived += [(A, click("d", A + F, tx=f"f{i}")) for i in range(20)]  # accepted, as far ahead as allowed
    arrived += [(A, click("d", A, tx="t1")), (A, click("d", A + 2, tx="t3"))]
    ids = xadd_arrived(settings, arrived)
    await run_pipeline(settings)
    got = outcomes(settings, ids)
    assert got == modelled(settings, ids, arrived)
    assert got[:2] == ["clean", "clean"] and got[-2:] == ["duplicate", "click_spam"]


@pytest.mark.parametrize("batch_size", [1, 7, 500])
async def test_a_late_click_gets_the_same_verdict_whatever_the_batches(settings: Settings, batch_size: int) -> None:
    # Two late clicks (inside the horizon), clicks from as far ahead as allowed, then a third late one:
    # the window it sees must not depend on whether a trim ran in its batch before it.
    late = A - H + 10_000
    arrived = [(A, click("d", late)), (A, click("d", late + 500))]
    arrived += [(A, click("d", A + F)) for _ in range(6)]
    arrived += [(A, click("d", late + 1000)) for _ in range(3)]
    ids = xadd_arrived(settings, arrived)
    await run_pipeline(replace(settings, batch_size=batch_size))
    got = outcomes(settings, ids)
    assert got == modelled(settings, ids, arrived)
    assert got[-3:] == ["click_spam"] * 3


async def test_a_backlog_processed_long_after_arrival_gets_the_same_verdicts(settings: Settings) -> None:
    settings = replace(settings, dedup_horizon_ms=1_000, click_spam_window_ms=500, max_future_ms=1_000)
    first = int(time.time() * 1000)
    arrived = [(first, click("d", tx="t1")), (first + 1, click("d", tx="t2"))]
    later = [(first + 2, click("d", tx="t1")), (first + 3, click("d", tx="t3"))]
    ids = xadd_arrived(settings, arrived)
    await run_burst(settings, "router")
    await run_burst(settings, "detector")
    # The retry and the next click arrived at once but are processed three horizons later.
    ids += xadd_arrived(settings, later)
    wait_until(lambda: time.time() * 1000 > first + 3_000, 10, "three horizons of wall time")
    await run_pipeline(settings)
    got = outcomes(settings, ids)
    assert got == modelled(settings, ids, arrived + later) == ["clean", "clean", "duplicate", "click_spam"]


async def test_windows_go_by_arrival_time_not_the_wall_clock(settings: Settings) -> None:
    """A device's window and trail are removed once every click in them is below what any later click's
    rules can see: H + the longest lookback before its arrival (judged in its partition: one partition
    here, so that the busy device's click moves the quiet one's)."""
    settings = replace(settings, partitions=1)
    ids = xadd_arrived(settings, [(A, click("quiet", A)), (A, click("busy", A))])
    await run_burst(settings, "router")
    await run_burst(settings, "detector")
    keys = Keys().partition(0)
    with redis.Redis.from_url(settings.redis_url) as client:
        assert client.exists(keys.trail("quiet")) == 1
    # The index keeps the quiet device's newest ts plus H: its state goes when that is below the bound.
    ids += xadd_arrived(settings, [(A + H + settings.history_ms + 1, click("busy"))])
    await run_pipeline(settings)
    with redis.Redis.from_url(settings.redis_url) as client:
        assert client.exists(keys.window("quiet"), keys.trail("quiet")) == 0
        assert client.exists(keys.window("busy"), keys.trail("busy")) == 2
        assert client.zrange(keys.window_index, 0, -1) == [b"busy"]
        assert client.pttl(keys.window("busy")) == -1, "no wall-clock expiry"
    assert outcomes(settings, ids) == ["clean", "clean", "clean"]


async def test_window_bounds_above_1e14_are_exact(settings: Settings) -> None:
    # 14 significant digits would round ts - H = 123456789012349 up to ...350 and trim t0's click.
    x = 123_456_789_012_349
    t = x + H
    arrived = [(t, click("d", x, tx="t0"))] + [(t, click("d", t)) for _ in range(7)] + [(t, click("d", x, tx="t0"))]
    arrived += [(t, click("e", t)), (t, click("e", t + 5_000)), (t, click("e", t + 10_000))]
    arrived += [(t, click("f", t)), (t, click("f", t + 5_000)), (t, click("f", t + 10_001))]
    ids = xadd_arrived(settings, arrived)
    await run_pipeline(settings)
    got = outcomes(settings, ids)
    assert got == modelled(settings, ids, arrived)
    assert got[8] == "duplicate" and got[-4:] == ["click_spam", "clean", "clean", "clean"]


@pytest.mark.parametrize("hostile", [
    [f"f{i}" if j == 0 else "v" for i in range(4_100) for j in (0, 1)],
    [f"f{i}" if j == 0 else "v" for i in range(10_000) for j in (0, 1)],
    ["device_id", "d", "ip", "192.0.2.1", "blob", "x" * 2_000_000],
], ids=["4100-fields", "10000-fields", "2MB-value"])
async def test_huge_entries_are_dead_lettered_bounded_and_do_not_stall_the_clicks_behind(
        settings: Settings, hostile: list[str]) -> None:
    ids = xadd_all(settings, [click("before"), hostile, click("after"), click("after")])
    await run_pipeline(settings)
    got = outcomes(settings, ids)
    assert got[0] == got[2] == got[3] == "clean" and got[1] in ("too_many_fields", "oversized_field")
    with redis.Redis.from_url(settings.redis_url) as client:
        (_, letter), = read_partitions(client, settings, "dead")
    limits = settings.max_field_count, settings.max_field_bytes
    # The header (reason, stage, raw_id), then the bounded copy.
    assert len(letter) <= 6 + 2 * limits[0]
    assert all(len(item) <= limits[1] for item in letter[6:])
    reason = letter[1].decode()
    if len(hostile) > 2 * limits[0]:
        assert reason.startswith("too_many_fields: ") and reason.endswith(f"; cut: fields {len(hostile) // 2}>32")
    else:
        assert reason.startswith("oversized_field: ") and reason.endswith("; cut: #3 value 2000000>1024")


async def test_a_nul_byte_in_the_ip_is_an_invalid_field(settings: Settings) -> None:
    ids = xadd_all(settings, [["device_id", "d", "ip", "192.0.2.1\x00"], click("ok")])
    await run_pipeline(settings)
    assert outcomes(settings, ids) == ["invalid_field", "clean"]


async def test_an_entry_id_past_year_9999_is_an_invalid_id(settings: Settings) -> None:
    ids = xadd_arrived(settings, [(A, click("ok")), (253_402_300_800_000, click("d"))])
    await run_pipeline(settings)
    assert outcomes(settings, ids) == ["clean", "invalid_id"]
