"""The robotic and impossible_travel rules on crafted traces, end to end through a real Redis Stack:
each trace's verdicts are the ones written here and the independent sequential model's."""

from __future__ import annotations

from dataclasses import replace

import pytest
import redis

from pipeline.core.keys import VERDICTS
from pipeline.core.settings import Settings, SettingsError
from tests.arrival import xadd_arrived
from tests.helpers import list_ips, run_pipeline, verdicts_by_raw_id
from tests.outputs import read_partitions
from tests.partition_audit import model_for

T0 = 1_700_000_000_000
MINUTE = 60_000
PARIS, LONDON, SINGAPORE = ("48.8566", "2.3522"), ("51.5074", "-0.1278"), ("1.3521", "103.8198")
LISTED = "203.0.113.9"


def click(device: str, ts: int, where: tuple[str, str] | None = None, ip: str = "192.0.2.10") -> list[str]:
    fields = ["device_id", device, "ip", ip, "ts", str(ts)]
    if where is not None:
        fields += ["lat", where[0], "lon", where[1]]
    return fields


async def judged(settings: Settings, clicks: list[list[str]], listed: tuple[str, ...] = (),
                 arrival: int | None = None) -> list[str | None]:
    """The clicks sent on time (arriving at their ts, in ts order, a device's in the order given) or all
    at one arrival, judged by the pipeline: each one's verdict (None: a dead letter or a duplicate),
    in the order given, checked against the independent sequential model's outcome."""
    if listed:
        await list_ips(settings, listed)
    times = [arrival or int(c[c.index("ts") + 1]) for c in clicks]
    order = sorted(range(len(clicks)), key=times.__getitem__)
    ids = dict(zip(order, xadd_arrived(settings, [(times[n], clicks[n]) for n in order]), strict=True))
    await run_pipeline(settings)
    verdicts = verdicts_by_raw_id(settings)
    model = model_for(settings, list(listed))
    modelled = {n: model.outcome(ids[n], [f.encode() for f in clicks[n]]) for n in order}
    got = [verdicts.get(ids[n]) for n in range(len(clicks))]
    assert got == [modelled[n] if modelled[n] in VERDICTS else None for n in range(len(clicks))], \
        "the pipeline and the model disagree"
    return got


def metronome(device: str, gaps: list[int], start: int = T0) -> list[list[str]]:
    times = [start]
    for gap in gaps:
        times.append(times[-1] + gap)
    return [click(device, t) for t in times]


# ---- robotic

async def test_a_metronome_is_robotic_from_the_minimum_number_of_intervals(settings: Settings) -> None:
    # 30 s apart (slower than click_spam's 3 in 10 s): the 6th click has 5 intervals, the minimum.
    got = await judged(settings, metronome("bot", [30_000] * 7))
    assert got == ["clean"] * 5 + ["robotic"] * 3


@pytest.mark.parametrize(("last_gap", "verdict"), [(1_020, "robotic"), (1_021, "clean")])
async def test_the_spread_is_compared_exactly(settings: Settings, last_gap: int, verdict: str) -> None:
    # Intervals 1000 x 4 and last_gap: robotic when (last_gap - 1000) x 5 x 1000 < 20 x (4000 + last_gap),
    # i.e. last_gap < 1020.08 (spread under 2 % of the mean). Alone: a click a second is click_spam first.
    settings = replace(settings, rules="robotic")
    got = await judged(settings, metronome("bot", [1_000] * 4 + [last_gap]))
    assert got[-1] == verdict


@pytest.mark.parametrize(("seconds", "verdict"), [((0, 6.0, 12.0, 18.1, 24.1, 30.0), "clean"),
                                                  ((0, 6.0, 12.0, 18.05, 24.0, 30.0), "robotic")])
async def test_the_readme_s_worked_example(settings: Settings, seconds: tuple[float, ...], verdict: str) -> None:
    got = await judged(settings, [click("bot", T0 + round(s * 1000)) for s in seconds])
    assert got == ["clean"] * 5 + [verdict]


async def test_equal_timestamps_are_never_robotic(settings: Settings) -> None:
    # All intervals 0: a spread of 0 is not under 0 x the fraction (bursts are click_spam's).
    settings = replace(settings, rules="robotic")
    got = await judged(settings, [click("bot", T0) for _ in range(9)])
    assert got == ["clean"] * 9


async def test_a_previous_click_counts_while_within_the_lookback(settings: Settings) -> None:
    # Lookback 100 s, inclusive: 20 s apart, the 6th click sees 5 intervals back to exactly ts - 100 s;
    # 25 s apart, it only ever sees 4 (the 5th click back is 125 s before it).
    settings = replace(settings, robotic_lookback_ms=100_000)
    got = await judged(settings, metronome("every-20s", [20_000] * 6) + metronome("every-25s", [25_000] * 8))
    assert got == ["clean"] * 5 + ["robotic"] * 2 + ["clean"] * 9


async def test_only_the_last_k_intervals_count(settings: Settings) -> None:
    # K = 5: one irregular interval stops counting once five regular ones came after it.
    settings = replace(settings, rules="robotic", robotic_intervals=5, robotic_min_intervals=5)
    got = await judged(settings, metronome("bot", [10_000, 50_000] + [10_000] * 6))
    assert got == ["clean"] * 7 + ["robotic"] * 2


async def test_out_of_order_event_times_are_not_regular(settings: Settings) -> None:
    # Intervals in arrival order: a step back in event time is a negative interval, never regular.
    settings = replace(settings, rules="robotic")
    times = [T0 + 10_000 * n for n in range(8)]
    times[4], times[5] = times[5], times[4]
    got = await judged(settings, [click("bot", t) for t in times], arrival=T0 + 100_000)
    assert got == ["clean"] * 8


# ---- impossible_travel

async def test_paris_then_singapore_ten_minutes_later_is_impossible(settings: Settings) -> None:
    got = await judged(settings, [click("d", T0, PARIS), click("d", T0 + 10 * MINUTE, SINGAPORE),
                                  click("d", T0 + 11 * MINUTE, SINGAPORE)])
    # The impossible click is the device's last position from then on.
    assert got == ["clean", "impossible_travel", "clean"]


async def test_a_hop_is_judged_by_the_speed_over_the_time_between(settings: Settings) -> None:
    # Paris - London is 344 km: 1000 km/h allow it in 21 min, not in 20.
    got = await judged(settings, [click("slow", T0, PARIS), click("slow", T0 + 21 * MINUTE, LONDON),
                                  click("fast", T0, PARIS), click("fast", T0 + 20 * MINUTE, LONDON)])
    assert got == ["clean", "clean", "clean", "impossible_travel"]


async def test_zero_distance_and_short_hops_at_the_same_instant_are_not_travel(settings: Settings) -> None:
    # Same place, same ms; then 49 km away a ms later: below the minimum distance (position noise).
    settings = replace(settings, rules="impossible_travel")
    got = await judged(settings, [click("d", T0, PARIS), click("d", T0, PARIS), click("d", T0 + 1, ("49.3", "2.3522"))])
    assert got == ["clean", "clean", "clean"]


async def test_the_antimeridian_and_the_poles_are_near_their_other_side(settings: Settings) -> None:
    got = await judged(settings, [
        # 22 km across the antimeridian, and across the North Pole; the same pole at any longitude.
        click("east", T0, ("0", "179.9")), click("east", T0 + 1, ("0", "-179.9")),
        click("north", T0, ("89.9", "0")), click("north", T0 + 1, ("89.9", "180")),
        click("pole", T0, ("90", "-180")), click("pole", T0 + 1, ("90", "45.5")),
        # Pole to pole in a minute is not.
        click("poles", T0, ("90", "0")), click("poles", T0 + MINUTE, ("-90", "0")),
    ])
    assert got == ["clean"] * 7 + ["impossible_travel"]


async def test_clicks_without_a_position_neither_trigger_nor_move_it(settings: Settings) -> None:
    got = await judged(settings, [click("d", T0, PARIS), click("d", T0 + MINUTE),
                                  click("d", T0 + 2 * MINUTE, SINGAPORE), click("d", T0 + 3 * MINUTE)])
    assert got == ["clean", "clean", "impossible_travel", "clean"]


async def test_a_position_is_remembered_for_the_lookback(settings: Settings) -> None:
    settings = replace(settings, travel_lookback_ms=30 * MINUTE)
    got = await judged(settings, [click("kept", T0, PARIS), click("kept", T0 + 30 * MINUTE, SINGAPORE),
                                  click("gone", T0, PARIS), click("gone", T0 + 30 * MINUTE + 1, SINGAPORE)])
    assert got == ["clean", "impossible_travel", "clean", "clean"]


# ---- precedence, switches, state

async def test_precedence_is_blacklist_spam_travel_robotic(settings: Settings) -> None:
    got = await judged(settings, [
        # A listed address hides the jump; the jump still moves the device's position.
        click("listed", T0, PARIS), click("listed", T0 + MINUTE, SINGAPORE, ip=LISTED),
        click("listed", T0 + 2 * MINUTE, PARIS),
        # The third click in 10 s is click_spam, even when it jumps too.
        click("spam", T0, PARIS), click("spam", T0 + 1, PARIS), click("spam", T0 + 2, SINGAPORE),
        # A metronome that also jumps is impossible_travel first.
        click("bot", T0, PARIS), *metronome("bot", [30_000] * 3, start=T0 + 30_000),
        click("bot", T0 + 150_000, SINGAPORE),
    ], listed=(LISTED,))
    assert got == ["clean", "ip_blacklist", "impossible_travel",
                   "clean", "clean", "click_spam",
                   "clean", "clean", "clean", "clean", "clean", "impossible_travel"]


async def test_rules_switched_off_neither_judge_nor_keep_state(settings: Settings) -> None:
    settings = replace(settings, rules="ip_blacklist,click_spam")
    got = await judged(settings, [click("d", T0, PARIS), click("d", T0 + MINUTE, SINGAPORE),
                                  *metronome("bot", [30_000] * 7)])
    assert got == ["clean"] * 10
    with redis.Redis.from_url(settings.redis_url) as client:
        assert client.keys(f"{settings.namespace}:*:trail:*") == []


def test_rule_settings_are_checked() -> None:
    with pytest.raises(SettingsError, match="names no rule"):
        Settings(rules="ip_blacklist,geofence").validate()
    with pytest.raises(SettingsError, match="at most FRAUD_ROBOTIC_INTERVALS"):
        Settings(robotic_intervals=3, robotic_min_intervals=4).validate()
    with pytest.raises(SettingsError, match="too large"):
        Settings(travel_max_kmh=10**10).validate()
    assert Settings(rules="robotic, click_spam").rule_names == ("click_spam", "robotic")
    assert Settings(rules="").rule_names == ()


# ---- the wire contract

@pytest.mark.parametrize(("lat", "lon"), [
    ("90.000000000001", "0"), ("-90.5", "0"), ("0", "180.0001"), ("0", "-181"), ("1e1", "0"), ("nan", "0"),
    ("inf", "0"), ("+45", "0"), (" 45", "0"), ("45.", "0"), (".5", "0"), ("0x10", "0"), ("", "0"), ("-", "0"),
    ("45.1234567890123", "0"), ("\u0664\u0665", "0"), ("\u221245", "0"), ("1000", "0"), ("45", "2,35"),
])
async def test_hostile_positions_are_dead_letters(settings: Settings, lat: str, lon: str) -> None:
    ids = xadd_arrived(settings, [(T0, click("d", T0, (lat, lon)))])
    await run_pipeline(settings)
    assert verdicts_by_raw_id(settings) == {}
    with redis.Redis.from_url(settings.redis_url) as client:
        (letter,) = [dict(zip(f[::2], f[1::2], strict=True)) for _, f in read_partitions(client, settings, "dead")]
    assert letter[b"raw_id"].decode() == ids[0]
    assert letter[b"reason"].startswith(b"invalid_position: "), letter[b"reason"]


@pytest.mark.parametrize("half", [["lat", "48.8"], ["lon", "2.3"]])
async def test_half_a_position_is_a_dead_letter(settings: Settings, half: list[str]) -> None:
    xadd_arrived(settings, [(T0, ["device_id", "d", "ip", "192.0.2.1", *half])])
    await run_pipeline(settings)
    with redis.Redis.from_url(settings.redis_url) as client:
        (letter,) = [dict(zip(f[::2], f[1::2], strict=True)) for _, f in read_partitions(client, settings, "dead")]
    assert letter[b"reason"].startswith(b"invalid_position: " + half[0].encode() + b" without")


async def test_positions_at_the_edges_are_accepted_and_passed_on(settings: Settings) -> None:
    edges = [("90", "180"), ("-90", "-180"), ("-0", "0.000000000001"), ("007.5", "-000")]
    got = await judged(settings, [click(f"d{n}", T0, where) for n, where in enumerate(edges)])
    assert got == ["clean"] * len(edges)
    with redis.Redis.from_url(settings.redis_url) as client:
        sent = {(f[f.index(b"lat") + 1], f[f.index(b"lon") + 1])
                for _, f in read_partitions(client, settings, "verdicts")}
    assert sent == {(a.encode(), o.encode()) for a, o in edges}
