"""Reading a member's next batches while its current steps run.

Behind a backlog (a partition's batch was full), the next ``XREAD`` of every owned partition is
sent with the steps, each partition from its batch's last id: the offset its step commits. Its
reply is used only if every step committed exactly the offset it was read from; a fenced or failed
step, suspects applied one by one, a rebalance or a lost connection discard it, and the next read
starts from the committed offsets. Correctness never rests on it: a stale batch would be fenced
by its step anyway. Without a backlog the next read blocks for new clicks instead: reading ahead
then only splits them into more, smaller batches, and a small batch costs Redis more per click.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from pipeline.client.resp import RespConnectionError, RespError
from pipeline.runtime.stage import Entry

Batches = dict[int, list[Entry]]
Offsets = dict[int, bytes]


def any_full(batches: Batches, batch_size: int) -> bool:
    """Whether a read left entries behind in some partition (its batch was full): a backlog."""
    return any(len(entries) >= batch_size for entries in batches.values())


class ReadAhead:
    def __init__(self, read_from: Callable[[Offsets], Awaitable[Batches]], batch_size: int) -> None:
        self.read_from = read_from
        self.batch_size = batch_size
        self._pending: asyncio.Future[Batches] | None = None
        self._after: Offsets = {}
        self._batches: Batches = {}

    def start(self, cursors: Offsets, batches: Batches) -> None:
        """Read what follows `batches` (each from its last id), if one of them was full."""
        if not any_full(batches, self.batch_size):
            return
        self._after = cursors | {unit: entries[-1][0] for unit, entries in batches.items()}
        self._pending = asyncio.ensure_future(self.read_from(dict(self._after)))

    async def settle(self) -> None:
        """Wait for the read in flight (after the steps); a failed one leaves nothing in hand."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            self._batches = await pending
        except (RespConnectionError, RespError, OSError):
            self.drop()  # the next, fresh read shows what went wrong

    def take(self, cursors: Offsets) -> Batches:
        """The batches read ahead if they follow exactly the offsets committed since; else none."""
        batches = self._batches if self._after == cursors else {}
        self.drop()
        return batches

    def drop(self) -> None:
        self._after, self._batches = {}, {}
