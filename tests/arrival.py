"""XADD with explicit entry ids, so that a test knows each click's arrival time (the id's ms part)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import redis

from pipeline.core.keys import Keys
from pipeline.core.settings import Settings


def xadd_arrived(settings: Settings, clicks: Iterable[tuple[int, Sequence[str | bytes]]]) -> list[str]:
    """XADD each (arrival ms, flat fields) with id ``<arrival>-*``; arrivals must not decrease."""
    keys = Keys(settings.namespace)
    with redis.Redis.from_url(settings.redis_url) as client:
        pipe = client.pipeline(transaction=False)
        for arrival, fields in clicks:
            pipe.execute_command("XADD", keys.raw, f"{arrival}-*", *fields)
        return [i.decode() for i in pipe.execute()]


def xadd_at_event_time(settings: Settings, clicks: Iterable[Sequence[str]]) -> list[str]:
    """XADD each click as if it arrived at its own ``ts`` (or with the click before it, when it has no
    valid one): traces with fixed event times are judged as they would have been when they happened."""
    arrived: list[tuple[int, Sequence[str]]] = []
    arrival = 1
    for fields in clicks:
        named = dict(zip(fields[::2], fields[1::2], strict=True))
        ts = named.get("ts", "")
        if ts.isdigit():
            arrival = max(arrival, int(ts))
        arrived.append((arrival, fields))
    return xadd_arrived(settings, arrived)
