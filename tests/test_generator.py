"""The demo and bench producer: how it spreads its clicks over sends (``--sends``), against a real server."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis

from agents.generator import produce, traffic, wall_clock_ms
from pipeline.client.connection import open_fast_client
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings


async def sends_of(settings: Settings, rate: float, total: int, sends: float | None) -> list[int]:
    """The size of each pipelined send of a run of `produce`."""
    client = await open_fast_client(settings)
    sizes: list[int] = []
    send = client.pipeline

    async def counted(commands: Sequence[Sequence[Any]]) -> list[Any]:
        sizes.append(len(commands))
        return await send(commands)

    client.pipeline = counted  # type: ignore[method-assign]
    try:
        sent = await produce(client, Keys(settings.namespace).raw, traffic(3, wall_clock_ms), rate=rate,
                             total=total, stop=asyncio.Event(), sends=sends)
    finally:
        await client.close()
    assert sent == total
    return sizes


async def test_sends_a_second_set_the_size_of_each_send(settings: Settings) -> None:
    assert await sends_of(settings, rate=2_000, total=100, sends=200) == [10] * 10
    # By default about ten sends a second, of at most 200 clicks.
    assert await sends_of(settings, rate=1_000, total=250, sends=None) == [100, 100, 50]
    with redis.Redis.from_url(settings.redis_url) as client:
        assert client.xlen(Keys(settings.namespace).raw) == 350
