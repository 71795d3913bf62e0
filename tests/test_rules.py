"""The detector's rules on crafted traces, end to end through a real Redis Stack."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
import redis

from pipeline.core.keys import VERDICTS, Keys
from pipeline.core.settings import Settings
from tests.arrival import xadd_arrived
from tests.helpers import list_ips, run_pipeline, series_totals, stream_entries, verdicts_by_raw_id, xadd_all
from tests.outputs import pipeline_drained, read_partitions, stats_totals
from tests.rule_model import RuleModel, ip_address

T0 = 1_700_000_000_000
# Every click of these traces arrives here: their ts lie within the horizon before it.
ARRIVAL = T0 + 200_000


def click(device: str, ts: int, ip: str = "192.0.2.10", tx: str | None = None, **extra: str) -> list[str]:
    fields = ["device_id", device, "ip", ip, "ts", str(ts)]
    if tx is not None:
        fields += ["transaction_id", tx]
    for name, value in extra.items():
        fields += [name, value]
    return fields


def verdict_entries(settings: Settings) -> list[tuple[str, dict[str, str]]]:
    """Every partition's verdicts."""
    return [entry for part in Keys(settings.namespace).partitions(settings.partitions)
            for entry in stream_entries(settings, part.verdicts)]


async def blacklist(settings: Settings, *ips: str) -> None:
    """List addresses the way `fraud blacklist add` does (filter and member set in step)."""
    await list_ips(settings, ips)


async def verdicts_of(settings: Settings, clicks: list[list[str]]) -> list[str | None]:
    """The verdict of each click, in order (None: no verdict)."""
    ids = xadd_arrived(settings, [(ARRIVAL, c) for c in clicks])
    await run_pipeline(settings)
    verdicts = verdicts_by_raw_id(settings)
    return [verdicts.get(i) for i in ids]


async def test_third_click_inside_the_window_is_spam(settings: Settings) -> None:
    verdicts = await verdicts_of(settings, [click("d", T0), click("d", T0 + 5_000), click("d", T0 + 9_999)])
    assert verdicts == ["clean", "clean", "click_spam"]


async def test_window_bounds_are_inclusive(settings: Settings) -> None:
    # [ts - 10000, ts]: a click exactly 10 s older still counts.
    verdicts = await verdicts_of(settings, [click("d", T0), click("d", T0 + 5_000), click("d", T0 + 10_000)])
    assert verdicts == ["clean", "clean", "click_spam"]


async def test_click_just_past_the_window_edge_is_clean(settings: Settings) -> None:
    verdicts = await verdicts_of(settings, [click("d", T0), click("d", T0 + 5_000), click("d", T0 + 10_001)])
    assert verdicts == ["clean", "clean", "clean"]


async def test_burst_across_the_edge_counts_only_clicks_in_the_window(settings: Settings) -> None:
    times = [T0, T0 + 9_000, T0 + 9_500, T0 + 19_400, T0 + 19_500, T0 + 30_000]
    verdicts = await verdicts_of(settings, [click("d", t) for t in times])
    # At 19400 the window [9400, 19400] holds 9500 only; at 19500 it holds 9500 and 19400.
    assert verdicts == ["clean", "clean", "click_spam", "clean", "click_spam", "clean"]


async def test_windows_are_per_device(settings: Settings) -> None:
    verdicts = await verdicts_of(settings, [click(f"d{i}", T0 + i) for i in range(5)])
    assert verdicts == ["clean"] * 5


async def test_event_time_not_arrival_order(settings: Settings) -> None:
    # Clicks from the future, already seen, do not count for an earlier click.
    verdicts = await verdicts_of(settings, [click("d", T0 + 20_000), click("d", T0 + 21_000), click("d", T0)])
    assert verdicts == ["clean", "clean", "clean"]


async def test_threshold_comes_from_settings(settings: Settings) -> None:
    verdicts = await verdicts_of(replace(settings, click_spam_threshold=1), [click("d", T0), click("d", T0 + 1)])
    assert verdicts == ["clean", "click_spam"]


async def test_blacklisted_ip_wins_over_spam(settings: Settings) -> None:
    await blacklist(settings, "203.0.113.9")
    verdicts = await verdicts_of(settings, [click("d", T0), click("d", T0 + 1), click("d", T0 + 2, ip="203.0.113.9"),
                                            click("e", T0, ip="203.0.113.9")])
    assert verdicts == ["clean", "clean", "ip_blacklist", "ip_blacklist"]


async def test_every_accepted_click_enters_the_window_whatever_its_verdict(settings: Settings) -> None:
    await blacklist(settings, "203.0.113.9")
    verdicts = await verdicts_of(settings, [click("d", T0, ip="203.0.113.9"), click("d", T0 + 1, ip="203.0.113.9"),
                                            click("d", T0 + 2)])
    assert verdicts == ["ip_blacklist", "ip_blacklist", "click_spam"]


@pytest.mark.parametrize(("listed", "sent"), [
    ("2001:db8::1", "2001:DB8:0:0:0:0:0:1"),
    ("2001:db8::1", "2001:db8::0001"),
    ("203.0.113.5", "::ffff:203.0.113.5"),
])
async def test_ipv6_spellings_match_the_blacklist(settings: Settings, listed: str, sent: str) -> None:
    await blacklist(settings, listed)
    assert await verdicts_of(settings, [click("d", T0, ip=sent)]) == ["ip_blacklist"]
    (_, fields), = verdict_entries(settings)
    assert fields["ip"] == listed


async def test_a_retry_gets_no_second_verdict_and_no_second_count(settings: Settings) -> None:
    clicks = [click("d", T0, tx="t1"), click("d", T0, tx="t1"), click("d", T0 + 50, tx="t1"),
              click("e", T0, tx="t1"), click("d", T0 + 1, tx="t2")]
    verdicts = await verdicts_of(settings, clicks)
    # The same transaction on another device is another click.
    assert verdicts == ["clean", None, None, "clean", "clean"]
    assert series_totals(settings) == dict.fromkeys(VERDICTS, 0) | {"clean": 3}
    with redis.Redis.from_url(settings.redis_url) as client:
        assert stats_totals(client, settings)["detector.duplicate"] == 2


async def test_retries_do_not_count_towards_spam(settings: Settings) -> None:
    verdicts = await verdicts_of(settings, [click("d", T0, tx="t1")] * 5 + [click("d", T0 + 1, tx="t2")])
    assert verdicts == ["clean", None, None, None, None, "clean"]


async def test_missing_ts_takes_the_entry_time(settings: Settings) -> None:
    ids = xadd_all(settings, [["device_id", "d", "ip", "192.0.2.1"]])
    await run_pipeline(settings)
    (_, fields), = verdict_entries(settings)
    assert fields["ts"] == ids[0].split("-")[0]
    assert fields["raw_id"] == ids[0]


async def test_extra_fields_pass_through_to_the_verdict(settings: Settings) -> None:
    await verdicts_of(settings, [click("d", T0, tx="t9", campaign="c7", placement="top")])
    (_, fields), = verdict_entries(settings)
    assert fields == {"device_id": "d", "ip": "192.0.2.10", "ts": str(T0), "transaction_id": "t9",
                      "campaign": "c7", "placement": "top", "verdict": "clean", "raw_id": fields["raw_id"]}


MALFORMED: list[tuple[list[str | bytes], str]] = [
    (["ip", "192.0.2.1", "ts", str(T0)], "missing_field: device_id"),
    (["device_id", "d", "ts", str(T0)], "missing_field: ip"),
    (["device_id", "d", "ip", "192.0.2.300"], "invalid_field: ip"),
    (["device_id", "d", "ip", "fe80::1%eth0"], "invalid_field: ip"),
    (["device_id", "d", "ip", "192.0.2.1", "ts", "-5"], "invalid_field: ts"),
    (["device_id", "d", "ip", "192.0.2.1", "ts", "1e12"], "invalid_field: ts"),
    (["device_id", "d", "ip", "192.0.2.1", "ts", "99999999999999999999"], "ts_in_future"),
    (["device_id", "d", "ip", "192.0.2.1", "ts", str(ARRIVAL - 300_001)], "ts_too_old"),
    (["device_id", "d", "ip", "192.0.2.1", "ts", str(ARRIVAL + 60_001)], "ts_in_future"),
    (["device_id", "d", "ip", "192.0.\x002.1"], "invalid_field: ip"),
    (["device_id", "", "ip", "192.0.2.1"], "invalid_field: device_id"),
    (["device_id", "d" * 129, "ip", "192.0.2.1"], "invalid_field: device_id"),
    (["device_id", "d", "ip", "192.0.2.1", "note", "x" * 2000], "oversized_field"),
    (["device_id", "d", "ip", "192.0.2.1", "verdict", "clean"], "reserved_field"),
    (["device_id", "d", "ip", "192.0.2.1", "ip", "192.0.2.2"], "duplicate_field"),
    (["device_id", b"\xff\xfe", "ip", "192.0.2.1"], "undecodable"),
    (["device_id", "d", "ip", "192.0.2.1", *[f"f{i}" if j == 0 else "v" for i in range(40) for j in (0, 1)]],
     "too_many_fields"),
]


async def test_malformed_clicks_go_to_the_dead_letter_stream_with_reason(settings: Settings) -> None:
    good = click("ok", ARRIVAL)
    ids = xadd_arrived(settings, [(ARRIVAL, fields) for fields, _ in MALFORMED] + [(ARRIVAL, good)])
    await run_pipeline(settings)
    with redis.Redis.from_url(settings.redis_url) as client:
        raw_dead = read_partitions(client, settings, "dead")
    by_raw_id = {dict(zip(flat[:6:2], flat[1:6:2], strict=True))[b"raw_id"].decode(): flat for _, flat in raw_dead}
    assert len(raw_dead) == len(MALFORMED)
    for entry_id, (_, reason) in zip(ids, MALFORMED, strict=False):
        header = dict(zip(by_raw_id[entry_id][:6:2], by_raw_id[entry_id][1:6:2], strict=True))
        assert header[b"reason"].decode().startswith(reason), header[b"reason"]
        # An entry over the size limits is dead-lettered by the router, which never copies it
        # (a field named twice in an entry within the limits is the detector's to find).
        sized = reason.startswith(("too_many_fields", "oversized_field"))
        assert header[b"stage"] == (b"router" if sized else b"detector")
    # The original fields follow the three header fields, byte for byte and in order (a value
    # over the size limit cut to it, as its reason says).
    for _, flat in raw_dead:
        entry_id = flat[5].decode()
        original = [f if isinstance(f, bytes) else f.encode() for f in MALFORMED[ids.index(entry_id)][0]]
        if flat[1].startswith(b"oversized_field"):
            assert flat[1].endswith(b"; cut: #3 value 2000>1024")
            original[-1] = original[-1][:1024]
        if flat[1].startswith(b"too_many_fields"):
            assert flat[1].endswith(b"; cut: fields 42>32")
            original = original[:64]
        assert flat[6:] == original
    # The pipeline kept going: the good click behind them has its verdict, every stage has committed all.
    assert verdicts_by_raw_id(settings) == {ids[-1]: "clean"}
    with redis.Redis.from_url(settings.redis_url) as client:
        assert pipeline_drained(client, settings)


async def test_generated_traffic_gets_the_model_s_outcome_and_its_label_s(settings: Settings) -> None:
    """The generator's labelled traffic: every outcome equals the independent model's, and agrees
    with the label (malformed clicks are dead letters, retries duplicates, listed IPs flagged)."""
    from agents.generator import TrafficMix, blacklisted_ips, traffic

    await blacklist(settings, *blacklisted_ips())
    ticks = iter(range(T0, T0 + 10**9, 37))
    trace = traffic(5, lambda: next(ticks), TrafficMix(humans=300, travellers=20))
    labelled = [next(trace) for _ in range(5000)]
    ids = xadd_arrived(settings, [(T0 + 5000 * 37, fields) for fields, _ in labelled])
    await run_pipeline(settings)
    keys = Keys(settings.namespace)
    verdicts = verdicts_by_raw_id(settings)
    dead = {fields["raw_id"]: fields["reason"].split(":", 1)[0]
            for part in keys.partitions(settings.partitions) for _, fields in stream_entries(settings, part.dead)}
    outcomes = [verdicts.get(i) or dead.get(i) or "duplicate" for i in ids]

    model = RuleModel(blacklist=frozenset(ip_address(ip) for ip in blacklisted_ips()))
    expected = [model.outcome(i, [f.encode() for f in fields]) for i, (fields, _) in zip(ids, labelled, strict=True)]
    assert outcomes == expected
    for outcome, (_, label) in zip(outcomes, labelled, strict=True):
        if label == "malformed":
            assert outcome not in ("clean", "ip_blacklist", "click_spam", "duplicate"), outcome
        elif label == "retry":
            assert outcome == "duplicate"
        elif label == "blacklisted":
            assert outcome == "ip_blacklist"
        elif label == "impossible_hop":
            assert outcome in ("impossible_travel", "click_spam"), outcome
        elif label == "metronome":
            assert outcome in ("clean", "robotic"), outcome
        else:
            assert outcome in ("clean", "click_spam"), (label, outcome)
    counts = Counter(verdicts.values())
    assert series_totals(settings) == {v: counts.get(v, 0) for v in VERDICTS}
    assert {label for _, label in labelled} == {"human", "bot_burst", "blacklisted", "retry", "malformed",
                                                "metronome", "traveller", "impossible_hop"}
    assert all(counts[v] > 0 for v in VERDICTS), counts
