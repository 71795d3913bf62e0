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
from pipeline.client.resp import RespClient, all_replies
from pipeline.core.keys import Keys
from pipeline.core.partitions import partition_of
from pipeline.core.replies import first_value
from pipeline.core.settings import Settings

Fields = Sequence[str | bytes]


@dataclass(frozen=True)
class Partitioner:
    keys: Keys
    partitions: int

    def stream(self, fields: Fields) -> str:
        """The input stream of the click's partition (by its ``device_id``)."""
        # A click's names may be text or bytes.
        device = first_value(fields, "device_id", None)
        if device is None:
            device = first_value(fields, b"device_id", b"")
        return self.keys.partition(partition_of(device, self.partitions)).input


class PartitionProducer:
    """Sends clicks (flat field/value lists) to their partitions' inputs, pipelined."""

    def __init__(self, client: RespClient, partitioner: Partitioner) -> None:
        self.client = client
        self.partitioner = partitioner

    async def send(self, clicks: Sequence[Fields]) -> list[bytes]:
        """XADD every click to its partition in one round trip; returns the entry ids."""
        return all_replies(await self.client.pipeline([("XADD", self.partitioner.stream(c), "*", *c)
                                                       for c in clicks]))

    async def close(self) -> None:
        await self.client.close()


async def open_producer(settings: Settings) -> PartitionProducer:
    client = await open_fast_client(settings)
    keys = Keys(settings.namespace)
    partitions = await agree_partitions(client.execute, keys, settings.partitions, record=False)
    return PartitionProducer(client, Partitioner(keys, partitions))
