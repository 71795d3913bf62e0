"""The blacklist's Cuckoo filter as the detector reads it: its shape comes from the settings.

The detector creates it at start-up (so its step can always ``CF.MEXISTS``) and ``fraud
blacklist`` before adding addresses: both through this one function.
"""

from __future__ import annotations

from pipeline.client.create import Execute, create_once
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings


async def ensure_filter(execute: Execute, keys: Keys, settings: Settings) -> None:
    await create_once(execute, "CF.RESERVE", keys.blacklist, settings.blacklist_capacity,
                      "BUCKETSIZE", settings.blacklist_bucket_size,
                      "MAXITERATIONS", settings.blacklist_max_iterations,
                      "EXPANSION", settings.blacklist_expansion)
