"""The pipeline's Redis Function library (the atomic server-side steps): loading it, an admin's
set-up step, and checking it, which is all an agent does.

Loading replaces the code every stage runs, so only the admin role may (``fraud setup``); an agent
that finds the library missing or not the one it was built with says so and waits for it.
"""

from __future__ import annotations

from importlib import resources

from pipeline.client.cluster import ClusterClient, every_master
from pipeline.client.resp import RespClient, RespError
from pipeline.core.errors import FraudError
from pipeline.core.replies import text_pairs

LIBRARY_NAME = "fraud"
# Starts like Redis's own "function not found" reply, so every caller that waits out a server
# whose functions are gone (a restart without them) waits this out the same way.
NOT_READY_PREFIX = "ERR Function not found"


class LibraryNotReady(RespError):
    """The server's ``fraud`` library is missing or differs from this build's: run ``fraud setup``."""


def library_source() -> str:
    return resources.files("agents").joinpath("fraud.lua").read_text()


async def load_functions(client: RespClient | ClusterClient) -> None:
    # REPLACE makes a rolling upgrade possible: the admin installs the new code, then agents of
    # the new build find it theirs and start (those of the old build wait, saying why).
    # On a cluster, every master runs the steps of its own slots: each needs the library.
    for node in every_master(client):
        await node.execute("FUNCTION", "LOAD", "REPLACE", library_source())


async def library_state(client: RespClient | ClusterClient) -> str:
    """``current``, ``outdated`` (another version is loaded) or ``missing``; on a cluster, the
    worst of the masters' (``missing`` before ``outdated``)."""
    states = {await _node_library_state(node) for node in every_master(client)}
    return next(state for state in ("missing", "outdated", "current") if state in states)


async def _node_library_state(client: RespClient) -> str:
    reply = await client.execute("FUNCTION", "LIST", "LIBRARYNAME", LIBRARY_NAME, "WITHCODE")
    for library in reply or ():
        fields = text_pairs(library)
        if fields.get("library_name") != LIBRARY_NAME:
            continue
        return "current" if fields.get("library_code") == library_source() else "outdated"
    return "missing"


async def require_functions(client: RespClient | ClusterClient, wait: bool) -> None:
    """Return if the server runs this build's library; else say what to do: as LibraryNotReady, a
    server-state error that agents wait out as they wait out a restart (``wait``), or as a
    FraudError that ends a one-off run."""
    state = await library_state(client)
    if state == "current":
        return
    which = "is not loaded" if state == "missing" else "on the server is another version than this agent's"
    problem = f"the '{LIBRARY_NAME}' function library {which}; an admin loads it with `fraud setup`"
    raise LibraryNotReady(f"{NOT_READY_PREFIX}: {problem}") if wait else FraudError(problem)

