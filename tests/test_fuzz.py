"""Arbitrary raw entries (any bytes, any field layout) never stop the pipeline or lose an entry.

Each example XADDs raw bytes to a real server and runs both stages in burst mode; then every
entry must have exactly one outcome (verdict, dead letter with a reason, or duplicate), nothing
may stay pending, and every counter must agree.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from agents.detector import Detector
from agents.pipeline import DETECTOR
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.runtime.agent import StreamAgent
from pipeline.runtime.stage import BatchContext, Entry
from schemas.click import canonical_ip
from tests.accounting import check_exactly_once
from tests.helpers import run_pipeline, xadd_all

KNOWN = [b"device_id", b"ip", b"ts", b"transaction_id"]
RESERVED = [b"verdict", b"raw_id"]

IPS = [b"192.0.2.1", b"::1", b"::ffff:192.0.2.1", b"2001:DB8::1", b"2001:0db8:0000::0001", b"fe80::1%eth0",
       b"0:0:0:0:0:0:0:1", b"1.2.3", b"256.1.1.1", b"01.2.3.4", b"[::1]", b"", b"::", b"1::2::3", b"\xff\xfe"]
TIMESTAMPS = [b"0", b"1", b"-1", b"1e3", b"12.5", b" 12", b"", b"9007199254740991", b"9007199254740992",
              b"99999999999999999", "\u0661\u0662".encode(), b"0x10", b"1700000000000"]

names = st.one_of(st.sampled_from(KNOWN + RESERVED), st.binary(max_size=12),
                  st.text(max_size=8).map(str.encode), st.binary(min_size=1020, max_size=1100))
values = st.one_of(st.binary(max_size=16), st.text(max_size=16).map(str.encode), st.sampled_from(IPS + TIMESTAMPS),
                   st.binary(min_size=1020, max_size=1100))


@st.composite
def raw_entry(draw: st.DrawFn) -> list[bytes]:
    """A flat field list: often click-like (so the rules run too), then mangled at will."""
    flat: list[bytes] = []
    if draw(st.booleans()):
        flat += [b"device_id", draw(st.sampled_from([b"d1", b"d2", b"d\xff", b"", b"x" * 129, b"d\n1"])),
                 b"ip", draw(st.sampled_from(IPS))]
        if draw(st.booleans()):
            flat += [b"ts", draw(st.sampled_from(TIMESTAMPS))]
        if draw(st.booleans()):
            flat += [b"transaction_id", draw(st.sampled_from([b"t1", b"t2", b"", b"t\x00", b"y" * 129]))]
    for name, value in draw(st.lists(st.tuples(names, values), max_size=4)):
        flat += [name, value]
    if draw(st.integers(0, 9)) == 0:
        flat += [v for i in range(draw(st.integers(30, 300))) for v in (b"f%d" % i, b"v")]
    return flat or [b"only", b"one"]


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(entries=st.lists(raw_entry(), min_size=1, max_size=12))
def test_arbitrary_entries_each_get_exactly_one_outcome(settings: Settings, entries: list[list[bytes]]) -> None:
    with redis.Redis.from_url(settings.redis_url) as client:
        client.flushall()
    xadd_all(settings, entries)
    asyncio.run(run_pipeline(settings))

    out = check_exactly_once(settings)
    assert len(out.raw) == len(entries)
    for letter in out.dead.values():
        assert not letter[b"reason"].startswith(b"error:"), f"the check itself crashed: {letter[b'reason']!r}"
    for fields in out.verdicts.values():
        ip = fields[b"ip"].decode()
        assert canonical_ip(ip) == ip, "a verdict carries a non-canonical ip"
        assert fields[b"ts"].isdigit()


class PoisonedDetector(Detector):
    """Fails on any batch holding the entry from device 'poison', as a bug triggered by one input would."""

    async def handle(self, ctx: BatchContext, entries: Sequence[Entry]) -> list[bytes]:
        for _, flat in entries:
            if flat and b"poison" in flat:
                raise ValueError("cannot digest this one")
        return await super().handle(ctx, entries)


async def test_poison_entry_is_dead_lettered_and_the_rest_flow(settings: Settings) -> None:
    clicks = [["device_id", "poison" if i == 7 else f"dev-{i}", "ip", "192.0.2.1", "ts", str(1000 + i)]
              for i in range(20)]
    ids = xadd_all(settings, clicks)
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
        assert client.hget(Keys().stats, "detector.dead") == b"1"
