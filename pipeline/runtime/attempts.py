"""Poison pills that kill the process: attempts at a partition's offset, counted in Redis.

An entry that makes its agent's process die (a segfault, an OOM kill, ``os._exit`` in a handler)
raises nothing that could isolate it, and its batch is never committed: every next owner of the
partition reads it again from the committed offset and dies in turn. So before a member applies a
batch, an attempt at the batch's offset is counted in the partition's lease hash: how many times a
batch following that offset was begun without being committed. Mostly the step that committed the
batch before counted it already, in the same atomic call (``commit`` in fraud.lua writes
``attempt_at`` = its ``last``, ``attempts`` = 1 and says so in its reply, unless suspects are
pending at or after ``last``): then beginning the next batch costs no call. Otherwise the member
counts it with ``fraud_attempt`` (fenced like a step): the first batch after it takes a partition,
after a fenced or failed step, and for suspects. What counting ahead costs: a process that dies
after committing a batch and before beginning the next has spent one attempt of the next batch (so
does one that stops or hands the partition over there: the next owner's begin is the second attempt;
attempts add up only while nothing is committed, so that is at most one of the
``FRAUD_MAX_ATTEMPTS`` spent with no process applying the batch). A batch whose offset saw
``FRAUD_MAX_ATTEMPTS`` of them already is not applied whole again: its entries become suspects,
which members apply one at a time with nothing else of theirs in flight (so a process that dies
blames that entry only), counting each one's attempts afresh; a suspect begun alone more than
``FRAUD_MAX_ATTEMPTS`` times is dead-lettered ``max_attempts`` (through ``fraud_reject``, fenced and
committing), and the partition moves on. A process counts an offset once, whatever it retries there
(a reconnect, a fenced step): only a process that ended without committing counts again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.core.stream_ids import parse_id
from pipeline.runtime.commits import Rejection
from pipeline.runtime.stage import BatchContext, Entry
from pipeline.runtime.steps import ATTEMPT


@dataclass(frozen=True)
class Begun:
    """What counting an attempt said: go ahead, fenced off, or the entries are suspects."""

    fenced: Sequence[bytes] = ()
    # The batch was not counted: its entries go one at a time (Attempts.suspect says how far).
    suspect: bool = False
    # Attempts at this offset so far, this one included (0: this process had counted it already).
    attempts: int = 0


class Attempts:
    """This member's side of the attempt counts: what it counted, and which entries are suspects."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # partition -> (offset, alone) of the attempt this process counted last there
        self.counted: dict[int, tuple[bytes, bool]] = {}
        # partition -> the last suspect entry's id, as the partition's lease hash said
        self.suspects: dict[int, bytes] = {}

    def forget(self, unit: int) -> None:
        """A partition taken afresh (or lost): whether it has suspects is asked again."""
        self.suspects.pop(unit, None)

    def suspect(self, unit: int, after: bytes) -> bool:
        """Whether the entry following `after` is a suspect, to be applied alone."""
        bound = self.suspects.get(unit)
        return bound is not None and parse_id(after) < parse_id(bound)

    async def begin(self, unit: int, ctx: BatchContext, entries: Sequence[Entry], alone: bool = False) -> Begun:
        """Count an attempt at `entries` (one entry when `alone`), before applying them."""
        if ctx.partition is None or self.counted.get(unit) == (ctx.after, alone):
            # The router's batches have no dead letters of their own; a retry was counted already.
            return Begun()
        keys, params = ctx.fence(entries)
        reply = await ctx.client.execute(*ATTEMPT.argv(keys, {**params, "limit": self.limit, "alone": int(alone)}))
        if reply[0] == b"fenced":
            return Begun(fenced=reply[1:])
        if reply[0] == b"suspect":
            self.suspects[unit] = reply[1]
            return Begun(suspect=True)
        self.counted[unit] = (ctx.after, alone)
        return Begun(attempts=int(reply[1]))

    def committed(self, unit: int, ctx: BatchContext, last: bytes) -> None:
        """A step in `ctx` committed a batch ending at `last`: when it counted the attempt at the
        batch after it too (no suspects pending there), the next whole batch's `begin` sends nothing."""
        if ctx.next_attempt:
            self.counted[unit] = (last, False)

    def exhausted(self, begun: Begun, entry: Entry) -> Rejection | None:
        """The dead letter of a suspect begun alone once more than the limit allows; else None."""
        if begun.attempts <= self.limit:
            return None
        ended = begun.attempts - 1
        return Rejection(entry[0], f"max_attempts: the process applying it ended {ended} times without committing",
                         entry[1] or ())
