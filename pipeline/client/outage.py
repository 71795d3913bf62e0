"""When Redis cannot answer a reading tool: one classification, and the outage's bookkeeping.

The tools that only read and show (``fraud up``'s live view, ``fraud status --watch``, the
monitor agent) must outlive what the agents outlive: a restart, ``LOADING`` while the AOF is
read back, a network blip, a slow server. Which errors those are is decided here, once; each
tool then says "unreachable since ..." its own way and tries again on its next tick.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipeline.client.resp import SERVER_STATE_ERRORS
from pipeline.core.units import clock, duration

# BusyLoadingError (LOADING) is a ConnectionError in redis-py; the builtin TimeoutError is what
# asyncio.timeout raises when a slow server does not answer in time.
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)

T = TypeVar("T")


def error_text(err: BaseException) -> str:
    """The error as the server said it: redis-py strips the code (``LOADING``, ``OOM``) off the message."""
    code = getattr(err, "status_code", None)
    text = str(err) or type(err).__name__
    return f"{code} {text}" if code and not text.startswith(code) else text


def is_unavailable(err: BaseException) -> bool:
    """True when the error is Redis's state (down, restarting, loading, too slow), not the request's."""
    if isinstance(err, _UNREACHABLE):
        return True
    return isinstance(err, ResponseError) and error_text(err).startswith(SERVER_STATE_ERRORS)


@dataclass
class Outage:
    """Whether the latest reading failed, since when (wall clock, ms) and why."""

    since_ms: int | None = None
    reason: str = ""
    # What the latest reading changed: it began an outage, or ended one that lasted this long.
    began: bool = False
    ended_after_ms: int | None = None

    @property
    def ongoing(self) -> bool:
        return self.since_ms is not None

    async def read(self, reading: Awaitable[T]) -> T | None:
        """The reading's result, or None while Redis is unavailable; any other error is raised."""
        try:
            result = await reading
        except Exception as err:
            if not is_unavailable(err):
                raise
            self.failed(err)
            return None
        self.succeeded()
        return result

    def failed(self, err: BaseException) -> None:
        self.reason = error_text(err)
        self.began, self.ended_after_ms = self.since_ms is None, None
        if self.since_ms is None:
            self.since_ms = now_ms()

    def succeeded(self) -> None:
        self.began = False
        self.ended_after_ms = None if self.since_ms is None else now_ms() - self.since_ms
        self.since_ms, self.reason = None, ""

    def describe(self) -> str:
        """'unreachable since <UTC time> (<how long>): <reason>', for a screen or a log line."""
        assert self.since_ms is not None
        return (f"unreachable since {clock(self.since_ms)} UTC ({duration(now_ms() - self.since_ms)}): "
                f"{self.reason}")


def now_ms() -> int:
    return int(time.time() * 1000)
