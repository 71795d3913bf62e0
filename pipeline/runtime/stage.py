"""A stage of the pipeline as the runtime, the tools and the tests see it: one declaration each.

A stage is a consumer group on one input stream; its handler applies a batch's effects with
the batch's acknowledgement in one atomic server-side step. The declarations themselves are in
``agents/pipeline.py``; everything that lists stages (the agent command, ``fraud up``, status,
the monitor, re-processing, bench, soak, the tests) reads them from there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.client.resp import RespClient
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings

Entry = tuple[bytes, list[bytes] | None]


@dataclass
class BatchContext:
    """What a handler needs to apply one batch: the connection and who it is acting as."""

    client: RespClient
    group: str
    consumer: str
    keys: Keys
    settings: Settings
    stage: str
    stream: str


class Handler(Protocol):
    async def setup(self, client: RespClient, keys: Keys, settings: Settings) -> None:
        """Create what the stage writes to (series, filters), idempotently."""
        ...

    async def handle(self, ctx: BatchContext, entries: Sequence[Entry]) -> list[bytes]:
        """Apply a batch with its XACK atomically; return the ids it was fenced off (not owned)."""
        ...


@dataclass(frozen=True)
class Stage:
    """One stage: its name (also its consumer group's, and its counters' prefix), its handler,
    the streams it reads and writes (as ``Keys`` attribute names) and the counters it keeps."""

    name: str
    handler: Callable[[Settings], Handler]
    input: str
    output: str | None
    # Counters in the stats hash, each ``<name>.<counter>``; `finished` ones add up to the
    # entries the stage is done with (an outcome each), which throughput is measured on.
    counters: tuple[str, ...]
    finished: tuple[str, ...]
    help: str

    def input_stream(self, keys: Keys) -> str:
        return str(getattr(keys, self.input))

    def output_stream(self, keys: Keys) -> str | None:
        return None if self.output is None else str(getattr(keys, self.output))

    def counter(self, name: str) -> str:
        return f"{self.name}.{name}"

    def finished_count(self, stats: Any) -> int:
        """Entries the stage is done with, from a stats mapping (counter name -> int)."""
        return sum(int(stats.get(self.counter(name), 0)) for name in self.finished)


def by_name(stages: Sequence[Stage], name: str) -> Stage:
    for stage in stages:
        if stage.name == name:
            return stage
    raise KeyError(f"no stage {name!r}: the stages are {', '.join(s.name for s in stages)}")
