"""The router's offset on the raw stream (fraud_advance): only forward, and with its lag exact."""

from __future__ import annotations

from typing import Any

import redis

from agents.pipeline import ROUTER
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.runtime.steps import ADVANCE
from tests.helpers import xadd_all
from tests.outputs import group_state


def advance(client: redis.Redis, stream: str, after: str, last: str, count: int) -> Any:
    return client.execute_command(*ADVANCE.argv(
        {"stream": stream}, {"group": ROUTER.name, "after": after, "last": last, "count": count}))


def test_a_late_batch_from_a_former_router_keeps_the_lag_exact(settings: Settings) -> None:
    """A former router, stalled with a batch read from an older offset, advances after the new one
    has moved on: the offset moves forward to its batch's end, and the group's lag stays known."""
    ids = xadd_all(settings, [["device_id", f"d{i}", "ip", "192.0.2.1"] for i in range(10)])
    raw = Keys(settings.namespace).raw
    with redis.Redis.from_url(settings.redis_url) as client:
        client.xgroup_create(raw, ROUTER.name, "0")
        assert advance(client, raw, "0-0", ids[4], 5) == 1  # the new router: 5 entries from the start
        assert group_state(client, raw, ROUTER.name) == (5, 0)
        assert advance(client, raw, "0-0", ids[2], 3) == 0  # a late batch behind the offset: nothing
        assert advance(client, raw, "0-0", ids[6], 7) == 1  # a late batch past it: forward to its end
        assert group_state(client, raw, ROUTER.name) == (3, 0), "the lag is no longer known"
        assert advance(client, raw, ids[6], ids[9], 3) == 1
        assert group_state(client, raw, ROUTER.name) == (0, 0)
