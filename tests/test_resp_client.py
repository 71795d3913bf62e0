"""The agents' client keeps each call's replies its own, whatever happens to a call on the way."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.client.resp import RespClient
from pipeline.dev.server import EmbeddedRedis
from tests.procs import freeze_pid, thaw_pid


async def wait_for(predicate: object, what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.01)


async def test_a_call_cancelled_while_logging_in_leaves_no_reply_behind(freezable_server: EmbeddedRedis) -> None:
    """A call that connects sends the login (here SELECT) first; cancelled while the login's reply
    is still to come, the connection must not be used as is: the next call would get that reply."""
    pid = freezable_server.pid
    assert pid is not None
    client = RespClient(freezable_server.url + "/1")
    freeze_pid(pid)  # the kernel still accepts connections; the server answers nothing
    try:
        call = asyncio.ensure_future(client.execute("PING"))
        await wait_for(lambda: client.connected, "the client to connect and send its login")
        assert not call.done()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    finally:
        thaw_pid(pid)
    try:
        assert await client.execute("ECHO", "mine") == b"mine"
        assert b" db=1 " in await client.execute("CLIENT", "INFO"), "the login was not made"
    finally:
        await client.close()
