"""The admin's set-up step: the Function library, every stage's consumer group and what its
stage writes to (filter, series). Idempotent: run it before the agents, and again to upgrade."""

from __future__ import annotations

from agents.pipeline import PIPELINE
from pipeline.client.connection import open_fast_client
from pipeline.client.create import create_once
from pipeline.client.functions import LIBRARY_NAME, load_functions
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings


async def set_up(settings: Settings) -> list[str]:
    """Load the library and create every stage's group and things; returns what was done."""
    keys = Keys(settings.namespace)
    client = await open_fast_client(settings)
    try:
        await load_functions(client)
        done = [f"function library '{LIBRARY_NAME}' loaded"]
        for stage in PIPELINE:
            stream = stage.input_stream(keys)
            created = await create_once(client.execute, "XGROUP", "CREATE", stream, stage.name, "0", "MKSTREAM")
            await stage.handler(settings).setup(client, keys, settings)
            done.append(f"group {stage.name} on {stream} {'created' if created else 'already there'}")
        return done
    finally:
        await client.close()
