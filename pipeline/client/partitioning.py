"""The number of partitions, agreed once per pipeline and recorded in Redis.

Every agent and every producer that writes into partitions must split devices the same way: the
first to start records ``FRAUD_PARTITIONS`` in ``<namespace>:config``, and any later one with a
different number refuses to start (a device split over two partitions would lose its order).
"""

from __future__ import annotations

from pipeline.client.create import Execute
from pipeline.core.errors import FraudError
from pipeline.core.keys import Keys


async def agree_partitions(execute: Execute, keys: Keys, wanted: int, record: bool = True) -> int:
    """The recorded number of partitions, checked against `wanted`; recorded first if none is and
    `record` (agents and set-up do; a producer, which may only write clicks, only checks)."""
    if record:
        await execute("HSETNX", keys.config, "partitions", wanted)
    found = await execute("HGET", keys.config, "partitions")
    recorded = wanted if found is None else int(found)
    if recorded != wanted:
        raise FraudError(
            f"FRAUD_PARTITIONS is {wanted} here but the pipeline in namespace {keys.namespace!r} runs "
            f"{recorded} partitions ({keys.config}); use the same number everywhere")
    return recorded
