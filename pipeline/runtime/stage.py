"""A stage of the pipeline as the runtime, the tools and the tests see it: one declaration each.

A stage is a consumer group. A partitioned stage has one input stream per partition, each owned
by one member of the stage at a time (a lease with a fencing epoch); its handler applies a batch's
effects and commits the group's offset in one atomic server-side step. The declarations
themselves are in ``agents/pipeline.py``; everything that lists stages (the agent command,
``fraud up``, status, the monitor, re-processing, bench, soak, the tests) reads them from there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.client.resp import RespClient
from pipeline.client.step import Step
from pipeline.core.keys import Keys, PartitionKeys
from pipeline.core.settings import Settings
from pipeline.runtime.steps import FENCE_KEYS, FENCE_PARAMS

Entry = tuple[bytes, list[bytes] | None]


@dataclass
class BatchContext:
    """What a handler needs to apply one batch: the connection, the partition, and the fence."""

    client: RespClient
    keys: Keys
    # The partition's keys (None for an unpartitioned stage: the router).
    partition: PartitionKeys | None
    settings: Settings
    stage: str
    stream: str
    owner: str
    epoch: int
    # The offset the batch follows: the group's last committed id.
    after: bytes
    # Set by `outcome`: the step committed and counted the next batch's attempt (attempts.py).
    next_attempt: bool = False

    def fence(self, entries: Sequence[Entry]) -> tuple[dict[str, str], dict[str, Any]]:
        """The keys and parameters every partition step is fenced and committed by."""
        assert self.partition is not None
        keys = dict(zip(FENCE_KEYS, (self.partition.lease(self.stage), self.partition.commits(self.stage),
                                     self.stream), strict=True))
        params = dict(zip(FENCE_PARAMS, (self.stage, self.owner, self.epoch, self.after, entries[0][0],
                                         entries[-1][0], self.stage), strict=True))
        return keys, params

    def outcome(self, reply: Any) -> list[bytes]:
        """What a partition step's reply says: why it was fenced off (another owner or offset now;
        empty when it applied and committed). Notes in `next_attempt` whether it counted the next one."""
        said = Step.reply(reply)
        self.next_attempt = said.next_attempt
        return said.fenced


class Handler(Protocol):
    async def setup(self, client: RespClient, keys: Keys, partition: PartitionKeys | None) -> None:
        """Create what the stage writes to in a partition it takes (series, filters), idempotently."""
        ...

    async def handle(self, ctx: BatchContext, entries: Sequence[Entry]) -> list[bytes]:
        """Apply a batch with its offset commit atomically; return why it was fenced (empty: applied)."""
        ...


@dataclass(frozen=True)
class Stage:
    """One stage: its name (also its consumer group's, and its counters' prefix), its handler,
    the streams it reads and writes (as attribute names of ``PartitionKeys``, or of ``Keys`` for
    an unpartitioned stage) and the counters it keeps."""

    name: str
    handler: Callable[[Settings], Handler]
    input: str
    output: str | None
    # Counters in the partitions' stats hashes, each ``<name>.<counter>``; `finished` ones add up
    # to the entries the stage is done with (an outcome each), which throughput is measured on.
    counters: tuple[str, ...]
    finished: tuple[str, ...]
    help: str
    partitioned: bool = True
    # How long a read that wakes the stage with a few entries (no batch full) lets more gather
    # before it reads again (the agent's poll): fewer, larger batches; 0 for never.
    linger_ms: Callable[[Settings], int] = lambda _: 0

    def units(self, settings: Settings) -> list[int]:
        """What members of the stage share: its partitions, or the one unpartitioned input."""
        return self.units_of(settings.partitions)

    def units_of(self, partitions: int) -> list[int]:
        """``units`` for a number of partitions (the tools read the one recorded in Redis)."""
        return list(range(partitions)) if self.partitioned else [0]

    def input_stream(self, keys: Keys, unit: int = 0) -> str:
        return str(getattr(keys.partition(unit) if self.partitioned else keys, self.input))

    def output_stream(self, keys: Keys, unit: int = 0) -> str | None:
        if self.output is None:
            return None
        return str(getattr(keys.partition(unit), self.output))

    def lease_key(self, keys: Keys, unit: int) -> str:
        return keys.partition(unit).lease(self.name) if self.partitioned else keys.lease(self.name)

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
