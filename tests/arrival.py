"""XADD with explicit entry ids, so that a test knows each click's arrival time (the id's ms part)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import redis

from pipeline.keys import Keys
from pipeline.settings import Settings


def xadd_arrived(settings: Settings, clicks: Iterable[tuple[int, Sequence[str | bytes]]]) -> list[str]:
    """XADD each (arrival ms, flat fields) with id ``<arrival>-*``; arrivals must not decrease."""
    keys = Keys(settings.namespace)
    with redis.Redis.from_url(settings.redis_url) as client:
        pipe = client.pipeline(transaction=False)
        for arrival, fields in clicks:
            pipe.execute_command("XADD", keys.raw, f"{arrival}-*", *fields)
        return [i.decode() for i in pipe.execute()]
