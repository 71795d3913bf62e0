"""The runtime shared by every stage: one member of a stage, driving its handler.

One agent is one member of one stage. It heartbeats to hold leases on its share of the stage's
partitions (``leases.py``), reads each owned partition's input from the offset the stage's
consumer group has committed, and hands each batch to the handler, which applies the batch's
effects and commits its offset in one atomic server-side step, fenced on the lease's epoch.
An offset is committed only with its batch's effects, never before: whatever happens between
read and commit, the batch is read again from the committed offset, by this member or by the
partition's next owner, which starts exactly there (Kafka's model; there is no pending-entries
list and nothing to reclaim).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import mode
import structlog

from pipeline.client.connection import open_fast_client, open_patiently
from pipeline.client.functions import require_functions
from pipeline.client.partitioning import agree_partitions
from pipeline.client.resp import RespClient, RespConnectionError, RespError, is_server_state_error
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.core.waiting import wait_or_stop
from pipeline.runtime.attempts import Attempts, Begun
from pipeline.runtime.commits import apply_or_reject, committed_offset, entries_to_blame, reject
from pipeline.runtime.leases import Assignment
from pipeline.runtime.read_ahead import ReadAhead, any_full
from pipeline.runtime.reading import read_units
from pipeline.runtime.stage import BatchContext, Entry, Handler, Stage
from pipeline.runtime.trimming import trim_done

log = structlog.get_logger()


class StreamAgent(mode.Service):
    """A member of a stage driving its handler until stopped (or, in burst mode, until idle)."""

    def __init__(self, stage: Stage, settings: Settings, *, handler: Handler | None = None, burst: bool = False,
                 consumer: str | None = None, **kwargs: Any) -> None:
        self.stage = stage
        # A test may hand in a handler of its own (one that fails on purpose); else the stage's.
        self.handler = handler if handler is not None else stage.handler(settings)
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self.consumer = consumer or settings.consumer
        self.burst = burst
        self.processed = 0
        self.client: RespClient | None = None
        self.assignment: Assignment | None = None
        # partition -> the offset its next batch follows (what this member last committed there)
        self.cursors: dict[int, bytes] = {}
        self.read_ahead = ReadAhead(lambda after: self.read(block=False, cursors=after), settings.batch_size)
        self.attempts = Attempts(settings.max_attempts)
        self._stopping = asyncio.Event()
        self._next_heartbeat = self._next_maintenance = self._backoff = 0.0
        self.linger_s = stage.linger_ms(settings) / 1000
        self.loop_done = asyncio.Event()
        # What ended the loop, when it was not a stop request: the process must then fail.
        self.error: Exception | None = None
        self.events = log.bind(stage=stage.name, consumer=self.consumer)
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        # A long-running agent waits for a Redis that is not there yet; a burst (a one-off run) says so and ends.
        opening = lambda: open_fast_client(self.settings)  # noqa: E731
        self.client = await (opening() if self.burst else open_patiently(opening, self.events))
        self.assignment = Assignment(self.client, self.stage, self.keys, self.settings, self.consumer,
                                     greedy=self.burst)
        while True:
            try:
                await self.prepare()
                break
            except (RespConnectionError, OSError, RespError) as err:
                # Redis went away, or is loading, between connecting and preparing: as in a step.
                if isinstance(err, RespError) and not is_server_state_error(err):
                    raise
                await self._recover(err)
        self.add_future(self._run())

    async def on_stop(self) -> None:
        if self.client is not None:
            if self.assignment is not None and self.client.connected and self.loop_done.is_set():
                try:
                    # Leaving hands the partitions over now rather than when the leases run out.
                    await self.assignment.leave()
                except (RespConnectionError, RespError, OSError) as err:
                    self.events.warning("could not release leases, they will run out", error=str(err))
            await self.client.close()

    @property
    def stopping(self) -> asyncio.Event:
        """Set once a stop was asked for: no batch is read after it."""
        return self._stopping

    def request_stop(self) -> None:
        """Stop reading; the batch in hand is finished and committed."""
        self._stopping.set()

    async def prepare(self) -> None:
        assert self.client is not None
        # The library is an admin's to load (`fraud setup`): a long-running agent waits for it; a burst ends.
        await require_functions(self.client, wait=not self.burst)
        await agree_partitions(self.client.execute, self.keys, self.settings.partitions)

    async def _run(self) -> None:
        try:
            self.events.info("agent started", stage=self.stage.name, partitions=self.settings.partitions)
            while not self._stopping.is_set():
                try:
                    done = await self.poll_once()
                    self._backoff = 0.0
                except (RespConnectionError, OSError) as err:
                    await self._recover(err)
                    continue
                except RespError as err:
                    if not is_server_state_error(err):
                        raise
                    # A server restarted without our functions or groups: wait, then take leases afresh.
                    self.events.warning("server refused a step, preparing again", error=str(err))
                    await self._recover(err, prepare=True)
                    continue
                if done and self.burst:
                    break
        except Exception as err:
            self.error = err
            self.events.exception("agent failed")
        finally:
            self.events.info("agent stopped", processed=self.processed)
            self.loop_done.set()

    async def _recover(self, err: Exception, prepare: bool = False) -> None:
        self._backoff = min(5.0, max(0.1, self._backoff * 2))
        delay = self._backoff * random.uniform(0.5, 1.0)
        self.events.warning("redis unavailable, retrying", error=str(err), retry_in_s=round(delay, 2))
        await wait_or_stop(self._stopping, delay)
        # Whatever happened meanwhile (a restart, a takeover), start again from the committed state.
        assert self.assignment is not None
        self.assignment.forget()
        self.cursors.clear()
        self.read_ahead.drop()  # it may come from a server that has since restarted and lost it
        self._next_heartbeat = 0.0
        if prepare:
            try:
                await self.prepare()
            except (RespConnectionError, RespError, OSError) as again:
                self.events.warning("prepare failed", error=str(again))

    async def poll_once(self) -> bool:
        """One iteration; returns True when there was nothing to do (the burst mode's end)."""
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.settings.lease_ms / 3000
            await self.rebalance()
        if now >= self._next_maintenance:
            self._next_maintenance = now + self.settings.maintenance_interval_ms / 1000
            await self.maintain()
        batches = self.read_ahead.take(self.cursors) or await self._read_lingering()
        if not self._stopping.is_set():
            self.read_ahead.start(self.cursors, batches)  # read_ahead.py
        try:
            await self.process_all(batches)
        finally:
            await self.read_ahead.settle()
        if not self.cursors and not self.burst:
            await wait_or_stop(self._stopping, max(0.0, self._next_heartbeat - time.monotonic()))
        return not batches

    async def _read_lingering(self) -> dict[int, list[Entry]]:
        """The next batches; woken by a few, lets more gather, then reads on (Kafka's fetch.max.wait.ms)."""
        batches = await self.read(block=not self.burst)
        if self.linger_s and not self.burst and batches and not any_full(batches, self.settings.batch_size):
            await wait_or_stop(self._stopping, max(0.0, min(self.linger_s, self._next_heartbeat - time.monotonic())))
            more = await self.read(block=False, cursors=self.cursors | {u: e[-1][0] for u, e in batches.items()})
            batches = {u: (batches.get(u, []) + more.get(u, []))[:self.settings.batch_size] for u in batches | more}
        return batches

    async def rebalance(self) -> None:
        assert self.assignment is not None and self.client is not None
        changes = await self.assignment.heartbeat()
        for unit in changes.lost:
            self.cursors.pop(unit, None)
        for unit in changes.gained:
            await self.take(unit)
        if changes.gained or changes.lost:
            self.events.info("partitions rebalanced", gained=changes.gained, lost=changes.lost,
                             owned=sorted(self.assignment.owned))

    async def take(self, unit: int) -> None:
        """Start on a partition: what the stage writes there exists, and reading resumes at its offset."""
        assert self.client is not None
        partition = self.keys.partition(unit) if self.stage.partitioned else None
        self.attempts.forget(unit)
        await self.handler.setup(self.client, self.keys, partition)
        self.cursors[unit] = await committed_offset(
            self.client, self.stage.input_stream(self.keys, unit), self.stage.name)

    async def read(self, block: bool, cursors: dict[int, bytes] | None = None) -> dict[int, list[Entry]]:
        """The next batch of every owned partition, from the offsets this member committed (or `cursors`)."""
        assert self.client is not None
        cursors = self.cursors if cursors is None else cursors
        # Never past the next heartbeat: the leases must be renewed in time.
        wait_ms = int(1000 * (self._next_heartbeat - time.monotonic()))
        block_ms = max(1, min(self.settings.block_ms, wait_ms)) if block else None
        return await read_units(self.client, {u: self.stage.input_stream(self.keys, u) for u in cursors}, cursors,
                                self.settings.batch_size, block_ms)

    def context(self, unit: int) -> BatchContext:
        assert self.client is not None and self.assignment is not None
        return BatchContext(
            self.client, self.keys, self.keys.partition(unit) if self.stage.partitioned else None,
            self.settings, self.stage.name, self.stage.input_stream(self.keys, unit), self.consumer,
            self.assignment.owned.get(unit, 0), self.cursors[unit])

    async def process_all(self, batches: dict[int, list[Entry]]) -> None:
        """Apply every partition's batch at once: while Redis runs one partition's step, the next
        one's is being built (the client keeps several calls in flight on its connection). Then
        the suspects of a crash (attempts.py), one entry at a time with nothing else in flight."""
        whole = [(u, e) for u, e in batches.items() if not self.attempts.suspect(u, self.cursors[u])]
        outcomes = await asyncio.gather(*(self.process(u, e) for u, e in whole), return_exceptions=True)
        # Every partition's batch has ended (applied, fenced, or failed) before a failure is acted on.
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        for unit, entries in sorted(batches.items()):
            if unit in self.cursors and self.attempts.suspect(unit, self.cursors[unit]):
                fenced = await self._apply_alone(unit, entries, counted=True)
                if fenced:
                    await self._fenced(unit, fenced)

    async def process(self, unit: int, entries: list[Entry]) -> None:
        ctx = self.context(unit)
        begun = await self.attempts.begin(unit, ctx, entries)
        if begun.fenced:
            await self._fenced(unit, list(begun.fenced))
        if begun.fenced or begun.suspect:
            return  # suspects are applied alone, after the other partitions' batches
        try:
            fenced = await self.handler.handle(ctx, entries)
        except Exception as err:
            if not entries_to_blame(err):
                raise
            self.events.warning("batch failed, applying its entries one by one", partition=unit, error=repr(err))
            fenced = await self._apply_alone(unit, entries, counted=False)
        if fenced:
            await self._fenced(unit, fenced)
            return
        self.cursors[unit] = entries[-1][0]
        self.attempts.committed(unit, ctx, entries[-1][0])
        self.processed += len(entries)

    async def _fenced(self, unit: int, why: list[bytes]) -> None:
        """A step refused the batch: the lease moved (stop reading there) or the offset did (re-read)."""
        assert self.assignment is not None
        self.events.warning("batch fenced off", partition=unit, why=[w.decode(errors="replace") for w in why])
        self.cursors.pop(unit, None)
        if await self.assignment.still_mine(unit):
            await self.take(unit)

    async def _apply_alone(self, unit: int, entries: list[Entry], counted: bool) -> list[bytes]:
        """Apply entries one by one, in order: a failed batch's (dead-lettering those that fail alone),
        or a crash's suspects while they last (`counted`: each attempt counted, see attempts.py)."""
        for entry in entries:
            ctx = self.context(unit)
            if counted and not self.attempts.suspect(unit, ctx.after):
                break
            begun = await self.attempts.begin(unit, ctx, [entry], alone=True) if counted else Begun()
            if begun.fenced:
                return list(begun.fenced)
            exhausted = self.attempts.exhausted(begun, entry)
            if exhausted is None:
                fenced = await apply_or_reject(self.handler, ctx, entry, self.events)
            else:
                self.events.error("entry ended its process too often, dead-lettering it", entry_id=entry[0].decode())
                fenced = await reject(ctx, [exhausted])
            if fenced:
                return fenced
            self.cursors[unit] = entry[0]
            self.attempts.committed(unit, ctx, entry[0])
            self.processed += 1 if counted else 0
        return []

    async def maintain(self) -> None:
        """Trim what every group is done with in the owned partitions' input and dead-letter streams."""
        assert self.client is not None
        await trim_done(self.client, self.stage, self.keys, self.settings, sorted(self.cursors))


async def run_burst(stage: Stage, settings: Settings, consumer: str, handler: Handler | None = None) -> StreamAgent:
    """Run one stage in this process until its inputs hold nothing more for it (tools and tests)."""
    agent = StreamAgent(stage, settings, handler=handler, burst=True, consumer=consumer)
    await agent.start()
    await agent.loop_done.wait()
    await agent.stop()
    return agent
