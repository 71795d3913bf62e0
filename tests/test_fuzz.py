"""The whole pipeline on arbitrary raw entries: none may stall it, lose an entry or change a verdict.

Each example XADDs entries with explicit ids (so each arrival time is known) to a real server,
mixing hostile entries (any bytes in any field, up to 10,000 fields, ts over the whole integer
range and at the edges of the event-time policy, ids past year 9999) with valid clicks, and runs
both stages in burst mode with a drawn batch size. Then every entry must have exactly one outcome,
nothing may stay pending, every series must sum to its verdicts, and every outcome must be what an
independent sequential model of the documented rules gives (tests/rule_model.py).

Set CI in the environment for a fixed example sequence (CI cannot fail by seed).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import replace

import redis
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from agents.detector import Detector
from agents.pipeline import DETECTOR
from pipeline.core.settings import Settings
from pipeline.runtime.agent import StreamAgent
from pipeline.runtime.stage import BatchContext, Entry
from schemas.click import canonical_ip
from tests.accounting import check_exactly_once
from tests.arrival import xadd_arrived
from tests.helpers import list_ips, run_burst, run_pipeline, xadd_all
from tests.outputs import read_partitions, stats_totals
from tests.rule_model import RuleModel

KNOWN = [b"device_id", b"ip", b"ts", b"transaction_id", b"lat", b"lon"]
RESERVED = [b"verdict", b"raw_id"]
H, W, F = 300_000, 10_000, 60_000
LISTED = "192.0.2.66"
# Past 9999-12-31T23:59:59.999Z: ids only a producer sets explicitly.
BEYOND_9999 = 253_402_300_800_000

IPS = [b"192.0.2.1", b"::1", b"::ffff:192.0.2.1", b"2001:DB8::1", b"2001:0db8:0000::0001", b"fe80::1%eth0",
       b"0:0:0:0:0:0:0:1", b"1.2.3", b"256.1.1.1", b"01.2.3.4", b"[::1]", b"", b"::", b"1::2::3", b"\xff\xfe",
       b"192.0.2.1\x00", b"\x00", LISTED.encode(), b"::ffff:" + LISTED.encode(), b"::FFFF:c000:242"]
# Positions: places (Paris, Singapore, both sides of the antimeridian, the poles) and hostile degrees.
LATS = [b"48.8566", b"1.3521", b"0", b"90", b"-90", b"89.99999"]
LONS = [b"2.3522", b"103.8198", b"179.9", b"-179.9", b"180", b"-180", b"0"]
DEGREES = [b"90.000000000001", b"-180.5", b"181", b"1e5", b"nan", b"inf", b"-inf", b"+45", b" 45", b"45.", b".5",
           b"0x10", b"", b"-", b"45.1234567890123", "\u0664\u0665".encode(), "\u221245".encode(), b"1000", b"\xff"]
TIMESTAMPS = [b"0", b"1", b"-1", b"1e3", b"12.5", b" 12", b"", b"9007199254740991", b"9007199254740992",
              b"99999999999999999", "\u0661\u0662".encode(), b"0x10", b"1700000000000", b"0" * 40 + b"1"]

names = st.one_of(st.sampled_from(KNOWN + RESERVED), st.binary(max_size=12),
                  st.text(max_size=8).map(str.encode), st.binary(min_size=1020, max_size=1100))
values = st.one_of(st.binary(max_size=16), st.text(max_size=16).map(str.encode), st.sampled_from(IPS + TIMESTAMPS),
                   st.binary(min_size=1020, max_size=1100))


def event_time(arrival: int) -> st.SearchStrategy[bytes]:
    """ts at the policy's edges around this arrival, anywhere in the integer range, or any bytes."""
    edges = [str(arrival + d).encode() for d in (-H - W - 1, -H - 1, -H, -H + 1, -W, -1, 0, 1, 2, F, F + 1)]
    hostile = st.one_of(st.integers(0, 2**80).map(lambda t: str(t).encode()), st.sampled_from(TIMESTAMPS),
                        st.binary(max_size=24))
    return mostly(edges, hostile)


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True about once in n draws (hypothesis favours small integers, so no integers(0, n) == 0)."""
    return st.sampled_from([False] * (n - 1) + [True])


def mostly(usual: list[bytes], hostile: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """One of the usual values three times in four, else a hostile one: the rules must run often."""
    return one_in(4).flatmap(lambda rare: hostile if rare else st.sampled_from(usual))


@st.composite
def raw_entry(draw: st.DrawFn, arrival: int) -> list[bytes]:
    """A flat field list: mostly click-like (so the rules run too), mangled at will."""
    flat: list[bytes] = []
    if draw(one_in(6)) is False:
        hostile_device = st.one_of(st.sampled_from([b"d\xff", b"", b"x" * 129, b"d\n1"]), st.binary(max_size=8))
        flat += [b"device_id", draw(mostly([b"d1", b"d2"], hostile_device)),
                 b"ip", draw(mostly([b"192.0.2.1", b"192.0.2.1", LISTED.encode(), b"2001:db8::1"],
                                    st.one_of(st.sampled_from(IPS), st.binary(max_size=20))))]
        if draw(one_in(4)) is False:
            flat += [b"ts", draw(event_time(arrival))]
        if draw(one_in(3)):
            hostile_degrees = st.one_of(st.sampled_from(DEGREES), st.binary(max_size=8))
            flat += [b"lat", draw(mostly(LATS, hostile_degrees)), b"lon", draw(mostly(LONS, hostile_degrees))]
        elif draw(one_in(10)):
            flat += [draw(st.sampled_from([b"lat", b"lon"])), draw(st.sampled_from(LATS))]  # half a position
        if draw(st.booleans()):
            flat += [b"transaction_id", draw(mostly([b"t1", b"t2"], st.sampled_from([b"", b"t\x00", b"y" * 129])))]
    if draw(one_in(8)):
        for name, value in draw(st.lists(st.tuples(names, values), max_size=4)):
            flat += [name, value]
    if draw(one_in(15)):
        flat += [v for i in range(draw(st.sampled_from([30, 300, 4_100, 10_000]))) for v in (b"f%d" % i, b"v")]
    return flat or [b"only", b"one"]


@st.composite
def arrived_entries(draw: st.DrawFn) -> list[tuple[int, list[bytes]]]:
    """Entries with non-decreasing arrivals from a drawn base (the last ones possibly past year 9999)."""
    arrival = draw(st.sampled_from([1, 1_700_000_000_000, 123_456_789_012_349, 253_402_300_799_000]))
    out = []
    for _ in range(draw(st.integers(1, 16))):
        arrival += draw(st.sampled_from([0] * 6 + [1, 999, W, H, H + W + 1]))
        if out and draw(one_in(4)):
            out.append((arrival, draw(st.sampled_from(out))[1]))  # re-sent, maybe past the horizon
        else:
            out.append((arrival, draw(raw_entry(arrival))))
    if draw(one_in(6)):
        arrival = max(arrival + 1, BEYOND_9999)
        out.append((arrival, draw(raw_entry(arrival))))
    return out


def outcome_of(out_verdicts: dict[bytes, dict[bytes, bytes]], dead: dict[bytes, dict[bytes, bytes]],
               entry_id: bytes) -> str:
    if entry_id in out_verdicts:
        return out_verdicts[entry_id][b"verdict"].decode()
    if entry_id in dead:
        return dead[entry_id][b"reason"].decode(errors="replace").split(":")[0]
    return "duplicate"


@hsettings(max_examples=400, deadline=None, derandomize=bool(os.environ.get("CI")),
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                  HealthCheck.data_too_large])
@given(entries=arrived_entries(), batch_size=st.sampled_from([1, 3, 500]), threshold=st.sampled_from([1, 2]))
def test_the_pipeline_gives_every_entry_the_modelled_outcome(
        settings: Settings, entries: list[tuple[int, list[bytes]]], batch_size: int, threshold: int) -> None:
    with redis.Redis.from_url(settings.redis_url) as client:
        client.flushall()
    asyncio.run(list_ips(settings, [LISTED]))
    ids = xadd_arrived(settings, entries)
    settings = replace(settings, batch_size=batch_size, click_spam_threshold=threshold)
    asyncio.run(run_pipeline(settings))

    out = check_exactly_once(settings, retries_may_expire=True)
    model = RuleModel(threshold=threshold, blacklist=frozenset({ipaddress.ip_address(LISTED)}))
    expected = [model.outcome(entry_id, flat) for entry_id, (_, flat) in zip(ids, entries, strict=True)]
    got = [outcome_of(out.verdicts, out.dead, entry_id.encode()) for entry_id in ids]
    assert got == expected
    for kind in set(got):
        event(kind)  # --hypothesis-show-statistics: how often each outcome came up
    for fields in out.verdicts.values():
        ip = fields[b"ip"].decode()
        assert canonical_ip(ip) == ip, "a verdict carries a non-canonical ip"
    for letter in out.dead.values():
        assert len(letter[b"reason"]) < 4096
    with redis.Redis.from_url(settings.redis_url) as client:
        for _, flat in read_partitions(client, settings, "dead"):
            assert len(flat) <= 2 * (3 + settings.max_field_count)


class PoisonedDetector(Detector):
    """Fails on any batch holding the entry from device 'poison', as a bug triggered by one input would."""

    async def handle(self, ctx: BatchContext, entries: Sequence[Entry]) -> list[bytes]:
        for _, flat in entries:
            if flat and b"poison" in flat:
                raise ValueError("cannot digest this one")
        return await super().handle(ctx, entries)


async def test_poison_entry_is_dead_lettered_and_the_rest_flow(settings: Settings) -> None:
    clicks = [["device_id", "poison" if i == 7 else f"dev-{i}", "ip", "192.0.2.1"] for i in range(20)]
    ids = xadd_all(settings, clicks)
    await run_burst(settings, "router")
    agent = StreamAgent(DETECTOR, settings, handler=PoisonedDetector(settings), burst=True, consumer="p")
    await agent.start()
    await agent.loop_done.wait()
    await agent.stop()

    out = check_exactly_once(settings, aggregated=False)
    assert set(out.dead) == {ids[7].encode()}
    letter = out.dead[ids[7].encode()]
    assert letter[b"reason"].startswith(b"error: ValueError: cannot digest this one")
    assert letter[b"stage"] == b"detector"
    assert letter[b"device_id"] == b"poison"
    assert sorted(out.verdicts) == sorted(i.encode() for n, i in enumerate(ids) if n != 7)
    with redis.Redis.from_url(settings.redis_url) as client:
        assert stats_totals(client, settings)["detector.dead"] == 1
