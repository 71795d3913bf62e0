"""Creating what the pipeline writes to, idempotently, with either client.

Every agent creates its groups, series and filter at start-up, and many may start at once:
"already there" is success. Redis says so in several words (``BUSYGROUP ... already exists``,
``TSDB: key already exists``, ``item exists``, ``... already has a src rule``); they are
recognised here, once. ``execute`` is the client's command coroutine: ``RespClient.execute``
or redis-py's ``execute_command``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.exceptions import ResponseError

from pipeline.client.resp import RespError

Execute = Callable[..., Awaitable[Any]]

_ALREADY_THERE = ("exists", "already has")


def is_already_there(err: BaseException) -> bool:
    return isinstance(err, RespError | ResponseError) and any(words in str(err) for words in _ALREADY_THERE)


async def create_once(execute: Execute, *command: Any) -> bool:
    """Run a creating command; True if it created, False if the thing was already there."""
    try:
        await execute(*command)
    except (RespError, ResponseError) as err:
        if not is_already_there(err):
            raise
        return False
    return True


async def ensure_series(execute: Execute, key: str, *, retention_ms: int, duplicate_policy: str,
                        labels: Sequence[str]) -> None:
    """A TimeSeries with these labels; one made by an older version gets them all (say, the namespace)."""
    labelled = ("LABELS", *labels)
    if not await create_once(execute, "TS.CREATE", key, "RETENTION", retention_ms,
                             "DUPLICATE_POLICY", duplicate_policy, *labelled):
        await execute("TS.ALTER", key, *labelled)
