"""``fraud replay FILE``: send a click trace or a mapped click log to the raw stream, flat out or
paced on event time, optionally re-timed so that its first click happens now.

Clicks go as they are, valid or not: judging them is the detector's job. A line
that is not a click at all (not JSON, not an object, wrong column count, a time
the mapping cannot read...) is reported with its number and dead-lettered with
stage ``replay``; the replay goes on.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pipeline.client.connection import open_fast_client
from pipeline.client.resp import RespClient, RespError
from pipeline.core.errors import FraudError
from pipeline.core.keys import Keys, PartitionKeys
from pipeline.core.partitions import partition_of
from pipeline.core.settings import Settings
from pipeline.ops.mapping import Mapping
from pipeline.ops.progress import Progress
from pipeline.ops.sources import open_source
from pipeline.ops.trace_files import BadLine, TraceClick, read_mapped, read_trace, resolve_format

STAGE = "replay"
# Waits shorter than this are not worth a flush and a sleep: the next one catches up.
MIN_SLEEP_S = 0.002
# Progress asks the file's position this often (in records), not at every one.
PROGRESS_EVERY = 4096


@dataclass
class ReplaySummary:
    sent: int = 0
    bad_lines: int = 0
    seconds: float = 0.0

    def text(self) -> str:
        rate = self.sent / self.seconds if self.seconds > 0 else 0.0
        bad = f"{self.bad_lines} bad line{'' if self.bad_lines == 1 else 's'}"
        return (f"sent {self.sent} clicks, {bad}, in {self.seconds:.2f} s "
                f"({rate:,.0f} clicks/s)")


class Pacer:
    """When each click is due: event-time gaps divided by the speed, from the first click on.

    Time follows the highest event time seen so far, so a click older than an
    earlier one goes at once instead of waiting a negative gap.
    """

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.first_ts: int | None = None
        self.high_ts = 0
        self.started = 0.0

    def due(self, ts: int | None) -> float:
        if ts is None:
            return 0.0
        if self.first_ts is None:
            self.first_ts = self.high_ts = ts
            self.started = time.monotonic()
        self.high_ts = max(self.high_ts, ts)
        return self.started + (self.high_ts - self.first_ts) / 1000 / self.speed


def bad_line_fields(bad: BadLine, max_bytes: int) -> list[str]:
    text = bad.text if len(bad.text) <= max_bytes else bad.text[:max_bytes] + "...(truncated)"
    return ["reason", f"bad_line: line {bad.line}: {bad.reason}", "stage", STAGE, "raw_id", "", "line", text]


class Sender:
    """Pipelined XADDs in batches; a batch goes when full or before a paced wait."""

    def __init__(self, client: RespClient, keys: Keys, batch_size: int) -> None:
        self.client = client
        self.keys = keys
        self.batch_size = batch_size
        self.commands: list[tuple[Any, ...]] = []

    async def add(self, command: tuple[Any, ...]) -> None:
        self.commands.append(command)
        if len(self.commands) >= self.batch_size:
            await self.flush()

    async def flush(self) -> None:
        if not self.commands:
            return
        commands, self.commands = self.commands, []
        for reply in await self.client.pipeline(commands):
            if isinstance(reply, RespError):
                raise FraudError(f"Redis refused a write: {reply}")


class Retimer:
    """Moves every ``ts`` by one offset, so that the first click with a ``ts`` happens now."""

    def __init__(self) -> None:
        self.offset: int | None = None

    def __call__(self, click: TraceClick) -> TraceClick:
        ts = click.event_time()
        if ts is None:
            return click
        if self.offset is None:
            self.offset = int(time.time() * 1000) - ts
        fields = list(click.fields)
        at = fields[::2].index("ts") * 2 + 1
        fields[at] = str(max(ts + self.offset, 0))
        return TraceClick(click.line, fields, click.fraud)


@contextmanager
def trace_items(path: Path, fmt: str, mapping: Mapping | None,
                progress_out: TextIO | None = None) -> Iterator[tuple[Iterator[TraceClick | BadLine], Progress]]:
    """The records of a file (decompressed, mapped when a mapping is given), with a progress
    display that follows the bytes read."""
    with open_source(path) as source:
        fmt = resolve_format(source, fmt)
        items = read_trace(source, fmt) if mapping is None else read_mapped(source, fmt, mapping)
        progress = Progress(source.size, unit="bytes", out=progress_out)

        def reporting() -> Iterator[TraceClick | BadLine]:
            for count, item in enumerate(items, 1):
                yield item
                if count % PROGRESS_EVERY == 0:
                    progress.update(source.read_so_far())
            progress.update(source.size)

        try:
            yield reporting(), progress
        finally:
            progress.finish()


def bad_line_partition(keys: Keys, settings: Settings) -> PartitionKeys:
    """Where a line that is no click is dead-lettered: the partition of a click without a device."""
    return keys.partition(partition_of(b"", settings.partitions))


async def dead_letter_bad_line(sender: Sender, keys: Keys, settings: Settings, bad: BadLine, progress: Progress,
                               path: Path) -> None:
    progress.note(f"{path}: line {bad.line}: {bad.reason}")
    part = bad_line_partition(keys, settings)
    await sender.add(("XADD", part.dead, "*", *bad_line_fields(bad, settings.max_field_bytes)))
    # Every dead letter is counted under its stage, as the agents count theirs.
    await sender.add(("HINCRBY", part.stats, f"{STAGE}.dead", 1))


async def replay_file(path: Path, fmt: str, speed: float | None, settings: Settings,
                      progress_out: TextIO | None = None, mapping: Mapping | None = None,
                      retime: bool = False) -> ReplaySummary:
    keys = Keys(settings.namespace)
    pacer = Pacer(speed) if speed else None
    retimer = Retimer() if retime else None
    summary = ReplaySummary()
    started = time.monotonic()
    client = await open_fast_client(settings)
    sender = Sender(client, keys, settings.batch_size)
    try:
        with trace_items(path, fmt, mapping, progress_out) as (items, progress):
            for item in items:
                if isinstance(item, BadLine):
                    summary.bad_lines += 1
                    await dead_letter_bad_line(sender, keys, settings, item, progress, path)
                    continue
                if retimer:
                    item = retimer(item)
                await _pace(pacer, sender, item)
                await sender.add(("XADD", keys.raw, "*", *item.fields))
                summary.sent += 1
            await sender.flush()
    finally:
        await client.close()
    summary.seconds = time.monotonic() - started
    return summary


async def _pace(pacer: Pacer | None, sender: Sender, click: TraceClick) -> None:
    if pacer is None:
        return
    due = pacer.due(click.event_time())
    if due - time.monotonic() > MIN_SLEEP_S:
        # What is due already goes now, not after the wait.
        await sender.flush()
        await asyncio.sleep(max(0.0, due - time.monotonic()))


def print_summary(summary: ReplaySummary) -> None:
    print(summary.text(), file=sys.stdout)
