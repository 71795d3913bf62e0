"""Sleeping that a stop request cuts short."""

from __future__ import annotations

import asyncio
import contextlib


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds``, or return early once ``stop`` is set; True when stopped."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
