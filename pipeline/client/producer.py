"""Writing clicks straight into their partitions: the producer API for Python.

``XADD clicks:raw`` works everywhere and costs a hop: the router reads each click back and copies
it into its partition (one more XADD and a read). A producer that knows the partition function
(``pipeline.core.partitions``) can skip the hop and ``XADD`` into ``<namespace>:{p}:in`` itself;
its clicks are judged exactly as routed ones, by their own entry ids' arrival times. It must run
the pipeline's number of partitions, which ``open_producer`` checks against the one recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.client.connection import open_fast_client
from pipeline.client.partitioning import agree_partitions
from pipeline.client.resp import RespClient, RespError
from pipeline.core.keys import Keys
from pipeline.core.partitions import partition_of
from pipeline.core.settings import Settings

Fields = Sequence[str | bytes]


def field_value(fields: Fields, name: str) -> str | bytes:
    """The first value of field `name` in a flat field/value list, "" when there is none."""
    for at in range(0, len(fields) - 1, 2):
        if fields[at] in (name, name.encode()):
            return fields[at + 1]
    return ""


@dataclass(frozen=True)
class Partitioner:
    keys: Keys
    partitions: int

    def stream(self, fields: Fields) -> str:
        """The input stream of the click's partition (by its ``device_id``)."""
        return self.keys.partition(partition_of(field_value(fields, "device_id"), self.partitions)).input


class PartitionProducer:
    """Sends clicks (flat field/value lists) to their partitions' inputs, pipelined."""

    def __init__(self, client: RespClient, partitioner: Partitioner) -> None:
        self.client = client
        self.partitioner = partitioner

    async def send(self, clicks: Sequence[Fields]) -> list[bytes]:
        """XADD every click to its partition in one round trip; returns the entry ids."""
        replies = await self.client.pipeline([("XADD", self.partitioner.stream(c), "*", *c) for c in clicks])
        for reply in replies:
            if isinstance(reply, RespError):
                raise reply
        return list(replies)

    async def close(self) -> None:
        await self.client.close()


async def open_producer(settings: Settings) -> PartitionProducer:
    client = await open_fast_client(settings)
    keys = Keys(settings.namespace)
    partitions = await agree_partitions(client.execute, keys, settings.partitions, record=False)
    return PartitionProducer(client, Partitioner(keys, partitions))
