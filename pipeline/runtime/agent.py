"""The consumer-group runtime shared by every stream stage.

One agent is one consumer in one group. Its loop is a series of small
iterations (``poll_once``): read a batch, hand it to the stage's handler, which
applies the batch's effects and its XACK in one atomic server-side call. An
entry is acknowledged only with its effects, never before, so whatever
happens between read and ack, the entry stays pending and is processed again,
by this consumer (own pending entries are re-read first after every start and
every reconnect) or by another (XAUTOCLAIM after ``claim_min_idle_ms``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import mode
import structlog

from pipeline.client.connection import open_fast_client, open_patiently
from pipeline.client.create import create_once
from pipeline.client.functions import require_functions
from pipeline.client.resp import RespClient, RespConnectionError, RespError, is_server_state_error
from pipeline.client.step import Step, counted
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.core.stream_ids import batch_bounds, id_at
from pipeline.core.waiting import wait_or_stop
from pipeline.runtime.stage import BatchContext, Entry, Handler, Stage
from pipeline.runtime.steps import CLAIM, FORGET_IDLE, REJECT, TRIM
from schemas.click import FieldLimits
from schemas.dead_letter import bounded_copy

log = structlog.get_logger()


@dataclass
class Rejection:
    entry_id: bytes
    reason: str
    fields: Sequence[bytes | str] = ()


def xreadgroup_entries(reply: Any) -> list[Entry]:
    if not reply:
        return []
    return [(entry[0], entry[1]) for entry in reply[0][1]]


async def reject(ctx: BatchContext, rejections: Sequence[Rejection]) -> list[bytes]:
    """Dead-letter entries with their reasons and ack them, atomically and fenced. Each copy is
    bounded (fields cut to the limits, what was cut said in the reason), so it can always be written."""
    if not rejections:
        return []
    lo, hi = batch_bounds([r.entry_id for r in rejections])
    limits = FieldLimits(ctx.settings.max_field_count, ctx.settings.max_field_bytes)
    records = [counted((r.entry_id, reason), fields)
               for r in rejections for reason, fields in [bounded_copy(r.reason, r.fields, limits)]]
    reply = await ctx.client.execute(*REJECT.argv(
        {"stream": ctx.stream, "dead": ctx.keys.dead, "stats": ctx.keys.stats},
        {"group": ctx.group, "consumer": ctx.consumer, "stage": ctx.stage, "lo": lo, "hi": hi},
        {"entries": records}))
    return fenced_ids(reply)


def fenced_ids(reply: list[Any]) -> list[bytes]:
    """The ids a step was fenced off (entries another consumer now owns); empty when it applied."""
    return Step.reply(reply).fenced


class StreamAgent(mode.Service):
    """A consumer-group member driving one handler until stopped (or, in burst mode, until idle)."""

    def __init__(self, stage: Stage, settings: Settings, *, handler: Handler | None = None, burst: bool = False,
                 consumer: str | None = None, **kwargs: Any) -> None:
        self.stage = stage
        # A test may hand in a handler of its own (one that fails on purpose); else the stage's.
        self.handler = handler if handler is not None else stage.handler(settings)
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self.stream = stage.input_stream(self.keys)
        self.consumer = consumer or settings.consumer
        self.burst = burst
        self.processed = 0
        self.client: RespClient | None = None
        self._stopping = asyncio.Event()
        self._drain_own_pending = True
        self._next_maintenance = 0.0
        self._backoff = 0.0
        self.loop_done = asyncio.Event()
        # What ended the loop, when it was not a stop request: the process must then fail.
        self.error: Exception | None = None
        self.events = log.bind(stage=stage.name, consumer=self.consumer)
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        # A long-running agent waits for a Redis that is not there yet; a burst (a one-off run) says so and ends.
        opening = lambda: open_fast_client(self.settings)  # noqa: E731
        self.client = await (opening() if self.burst else open_patiently(opening, self.events))
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
            await self.client.close()

    @property
    def stopping(self) -> asyncio.Event:
        """Set once a stop was asked for: no batch is read after it."""
        return self._stopping

    def request_stop(self) -> None:
        """Stop reading; the batch in hand is finished and acknowledged."""
        self._stopping.set()

    async def prepare(self) -> None:
        assert self.client is not None
        # The library is an admin's to load (`fraud setup`): a long-running agent waits for it; a burst ends.
        await require_functions(self.client, wait=not self.burst)
        await create_once(self.client.execute, "XGROUP", "CREATE", self.stream, self.stage.name, "0", "MKSTREAM")
        await self.handler.setup(self.client, self.keys, self.settings)

    async def _run(self) -> None:
        try:
            self.events.info("agent started", stream=self.stream, group=self.stage.name)
            while not self._stopping.is_set():
                try:
                    done = await self.poll_once()
                    self._backoff = 0.0
                except (RespConnectionError, OSError) as err:
                    await self._recover(err)
                    continue
                except RespError as err:
                    # A server restarted without our group or functions: install them again.
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
        self._drain_own_pending = True
        if prepare:
            try:
                await self.prepare()
            except (RespConnectionError, RespError, OSError) as again:
                self.events.warning("prepare failed", error=str(again))

    async def poll_once(self) -> bool:
        """One iteration; returns True when there was nothing to do (the burst mode's end)."""
        now = time.monotonic()
        if now >= self._next_maintenance:
            self._next_maintenance = now + self.settings.maintenance_interval_ms / 1000
            if await self.maintain():
                return False
        if self._drain_own_pending:
            entries = await self.read("0", block=False)
            if entries:
                await self.process(entries, redelivered=True)
                return False
            self._drain_own_pending = False
        entries = await self.read(">", block=not self.burst)
        if not entries:
            return True
        await self.process(entries, redelivered=False)
        return False

    async def read(self, from_id: str, block: bool) -> list[Entry]:
        assert self.client is not None
        args: list[Any] = ["XREADGROUP", "GROUP", self.stage.name, self.consumer,
                           "COUNT", self.settings.batch_size]
        if block:
            args += ("BLOCK", self.settings.block_ms)
        reply = await self.client.execute(*args, "STREAMS", self.stream, from_id)
        return xreadgroup_entries(reply)

    async def maintain(self) -> int:
        """Reclaim a dead consumer's entries, trim what every group is done with, forget idle consumers."""
        assert self.client is not None
        s = self.settings
        # XAUTOCLAIM, with a `deleted` dead letter for every pending entry gone from the stream,
        # in one step: such a click gets its outcome even though its entry cannot be processed.
        reply = await self.client.execute(*CLAIM.argv(
            {"stream": self.stream, "dead": self.keys.dead, "stats": self.keys.stats},
            {"group": self.stage.name, "consumer": self.consumer, "stage": self.stage.name,
             "min_idle_ms": s.claim_min_idle_ms, "start": "0-0", "count": s.batch_size}))
        claimed = [(e[0], e[1]) for e in reply[1]]
        if claimed:
            self.events.warning("reclaimed entries of a silent consumer", count=len(claimed))
            await self.process(claimed, redelivered=True)
        if reply[2]:
            self.events.warning("pending entries were gone from the stream, dead-lettered as deleted",
                                entry_ids=[i.decode() for i in reply[2]])
        now_ms = int(time.time() * 1000)
        await self.client.execute(*TRIM.argv({"stream": self.stream}, {"keep_from": id_at(now_ms - s.stream_keep_ms)}))
        # Nobody consumes dead letters as a group: they are kept for people, for a while.
        await self.client.execute("XTRIM", self.keys.dead, "MINID", id_at(now_ms - s.dead_keep_ms))
        removed = await self.client.execute(*FORGET_IDLE.argv(
            {"stream": self.stream}, {"group": self.stage.name, "idle_ms": s.consumer_idle_delete_ms}))
        if removed:
            self.events.info("removed idle consumers", consumers=[r.decode() for r in removed])
        return len(claimed)

    def context(self) -> BatchContext:
        assert self.client is not None
        return BatchContext(self.client, self.stage.name, self.consumer, self.keys, self.settings,
                            self.stage.name, self.stream)

    async def process(self, entries: list[Entry], redelivered: bool) -> None:
        ctx = self.context()
        if redelivered:
            entries = await self._cap_deliveries(ctx, entries)
        try:
            await self._apply(ctx, entries)
        except Exception as err:
            if not _entries_to_blame(err):
                raise
            await self._isolate_poison(ctx, entries, err)
        self.processed += len(entries)

    async def _apply(self, ctx: BatchContext, entries: list[Entry]) -> None:
        while entries:
            lost = set(await self.handler.handle(ctx, entries))
            if not lost:
                return
            # Another consumer claimed these meanwhile: they are its to apply now.
            self.events.warning("fenced off entries claimed by another consumer", count=len(lost))
            entries = [e for e in entries if e[0] not in lost]

    async def _isolate_poison(self, ctx: BatchContext, entries: list[Entry], err: Exception) -> None:
        if len(entries) > 1:
            self.events.warning("batch failed, retrying its entries one by one", error=repr(err))
            for entry in entries:
                try:
                    await self._apply(ctx, [entry])
                except Exception as one_err:
                    if not _entries_to_blame(one_err):
                        raise
                    await self._dead_letter_failure(ctx, entry, one_err)
            return
        await self._dead_letter_failure(ctx, entries[0], err)

    async def _dead_letter_failure(self, ctx: BatchContext, entry: Entry, err: Exception) -> None:
        self.events.error("entry made the stage fail, dead-lettering it", entry_id=entry[0].decode(),
                       error=repr(err))
        await reject(ctx, [Rejection(entry[0], f"error: {type(err).__name__}: {err}"[:500], entry[1] or ())])

    async def _cap_deliveries(self, ctx: BatchContext, entries: list[Entry]) -> list[Entry]:
        """Dead-letter entries delivered more than max_deliveries times, so a poison entry cannot loop."""
        assert self.client is not None
        lo, hi = batch_bounds([e[0] for e in entries])
        rows = await self.client.execute(
            "XPENDING", self.stream, self.stage.name, lo, hi, 1_000_000, self.consumer)
        deliveries = {row[0]: row[3] for row in rows}
        limit = self.settings.max_deliveries
        over = [e for e in entries if deliveries.get(e[0], 0) > limit]
        if not over:
            return entries
        self.events.error("entries exceeded the delivery limit, dead-lettering them", count=len(over))
        await reject(ctx, [Rejection(e[0], f"max_deliveries: delivered more than {limit} times", e[1] or ())
                           for e in over])
        over_ids = {e[0] for e in over}
        return [e for e in entries if e[0] not in over_ids]


def _entries_to_blame(err: Exception) -> bool:
    """Whether a failed step may be the entries' fault (then they are isolated, and a poison one
    dead-lettered), rather than the connection's or the server's state (then it is waited out)."""
    return not isinstance(err, RespConnectionError | OSError) and not is_server_state_error(err)


async def run_burst(stage: Stage, settings: Settings, consumer: str, handler: Handler | None = None) -> StreamAgent:
    """Run one stage in this process until its stream holds nothing more for it (tools and tests)."""
    agent = StreamAgent(stage, settings, handler=handler, burst=True, consumer=consumer)
    await agent.start()
    await agent.loop_done.wait()
    await agent.stop()
    return agent
