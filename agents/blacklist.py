"""The blacklist's Cuckoo filter as the detector reads it: its shape comes from the settings.

Each partition has its own copy (its step reads it in its own slot). The detector creates a
partition's copy when it takes the partition (so its step can always ``CF.MEXISTS``), and ``fraud
blacklist`` before adding addresses: both through this one function.
"""

from __future__ import annotations

from pipeline.client.create import Execute, create_once
from pipeline.core.keys import PartitionKeys
from pipeline.core.settings import Settings


async def ensure_filter(execute: Execute, keys: PartitionKeys, settings: Settings) -> None:
    await create_once(execute, "CF.RESERVE", keys.blacklist, settings.blacklist_capacity,
                      "BUCKETSIZE", settings.blacklist_bucket_size,
                      "MAXITERATIONS", settings.blacklist_max_iterations,
                      "EXPANSION", settings.blacklist_expansion)
