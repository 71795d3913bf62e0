"""Entry ids a producer sets itself, at the edges of what a number in the function library holds:
the router compares and copies them exactly (Lua's numbers are doubles, exact only below 2^53)."""

from __future__ import annotations

from dataclasses import replace

import redis

from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from tests.accounting import check_exactly_once
from tests.helpers import run_burst, run_pipeline

TWO_53 = 2**53


def xadd_with_ids(settings: Settings, stream: str, ids: list[str]) -> None:
    with redis.Redis.from_url(settings.redis_url) as client:
        for entry_id in ids:
            client.xadd(stream, {"device_id": "d", "ip": "192.0.2.1"}, id=entry_id)


async def test_ids_apart_only_past_2_to_the_53_are_each_routed_once(settings: Settings) -> None:
    """Two ids that differ past 2^53 (in the sequence, or in the millisecond part) are different
    clicks: each must reach its partition and get its outcome, not be taken for one routed before."""
    settings = replace(settings, partitions=1, batch_size=1)
    ids = [f"1000-{TWO_53}", f"1000-{TWO_53 + 1}", f"1000-{TWO_53 + 2}",
           f"{TWO_53}-0", f"{TWO_53 + 1}-0"]
    xadd_with_ids(settings, Keys(settings.namespace).raw, ids)
    await run_pipeline(settings)
    out = check_exactly_once(settings)
    assert sorted(out.verdicts) + sorted(out.dead) == [i.encode() for i in ids]
    assert {fields[b"reason"].split(b":")[0] for fields in out.dead.values()} == {b"invalid_id"}


async def test_a_routed_click_behind_a_direct_one_past_2_to_the_53_takes_the_next_id(settings: Settings) -> None:
    """The mixed case (producers write into the partition too) when the partition's top lies past
    2^53 ms: the routed click goes right after the top, and the router does not fail."""
    settings = replace(settings, partitions=1)
    keys = Keys(settings.namespace)
    xadd_with_ids(settings, keys.raw, [f"{TWO_53 + 1}-0"])
    assert (await run_burst(settings, "router")).error is None
    with redis.Redis.from_url(settings.redis_url) as client:
        direct = client.xadd(keys.partition(0).input, {"device_id": "d", "ip": "192.0.2.1"})
        routed_later = client.xadd(keys.raw, {"device_id": "d", "ip": "192.0.2.1"})
        assert direct == routed_later == f"{TWO_53 + 1}-1".encode(), "the same id on both streams"
    router = await run_burst(settings, "router")
    assert router.error is None, f"the router failed: {router.error!r}"
    with redis.Redis.from_url(settings.redis_url) as client:
        assert [e[0] for e in client.xrange(keys.partition(0).input)] == [
            f"{TWO_53 + 1}-{seq}".encode() for seq in range(3)]
