"""The admin's set-up step: the Function library, the number of partitions, every stage's consumer
group in each of its inputs and what it writes to there (filters, series), and on a cluster every
master's RedisTimeSeries view of the cluster. Idempotent: run it
before the agents, and again to upgrade."""

from __future__ import annotations

from agents.pipeline import PIPELINE
from pipeline.client.connection import open_fast_client
from pipeline.client.create import create_once
from pipeline.client.functions import LIBRARY_NAME, load_functions
from pipeline.client.partitioning import agree_partitions
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.ops.timeseries_cluster import refresh_every_master


async def set_up(settings: Settings) -> list[str]:
    """Load the library and create every stage's groups and things; returns what was done."""
    keys = Keys(settings.namespace)
    client = await open_fast_client(settings)
    try:
        await load_functions(client)
        done = [f"function library '{LIBRARY_NAME}' loaded"]
        await agree_partitions(client.execute, keys, settings.partitions)
        done.append(f"{settings.partitions} partitions ({keys.config})")
        for stage in PIPELINE:
            handler = stage.handler(settings)
            created = 0
            for unit in stage.units(settings):
                stream = stage.input_stream(keys, unit)
                created += await create_once(client.execute, "XGROUP", "CREATE", stream, stage.name, "0", "MKSTREAM")
                await handler.setup(client, keys, keys.partition(unit) if stage.partitioned else None)
            units = len(stage.units(settings))
            done.append(f"group {stage.name}: {created} of {units} input(s) created, {units - created} already there")
        # On a cluster, TS.MRANGE answers for every shard only once each master's RedisTimeSeries
        # has read the cluster's shape: without it, each silently counts its own shard alone.
        if refreshed := await refresh_every_master(client):
            done.append(f"RedisTimeSeries cluster view refreshed on {refreshed} masters")
        return done
    finally:
        await client.close()
