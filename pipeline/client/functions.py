"""Installs the pipeline's Redis Function library (the atomic server-side steps)."""

from __future__ import annotations

from importlib import resources

from pipeline.client.resp import RespClient

LIBRARY_NAME = "fraud"


def library_source() -> str:
    return resources.files("agents").joinpath("fraud.lua").read_text()


async def load_functions(client: RespClient) -> None:
    # REPLACE makes a rolling upgrade safe: every agent installs the code it was built with.
    await client.execute("FUNCTION", "LOAD", "REPLACE", library_source())
