"""A minimal asyncio Redis client for the agents' hot path.

redis-py packs commands in pure Python (it parses replies with hiredis when installed); here
``hiredis`` does both in C. Re-measured on 2026-11-29 against redis-py 8.1.0 with hiredis 3.5.0,
the agents' own workload on one machine in one run (client CPU per click, three rounds, a
shared 2-core machine): a producer's pipelined XADDs of 500 clicks cost 1.5-2.0 us here and
18.3-19.1 us with redis-py; a detector's XREADGROUP of 500 plus one call with ~17 arguments per
click, 3.4-4.9 us here and 8.8-10.3 us with redis-py. So the agents keep this client; it offers
only what they need: one command, or a pipeline of commands, on one connection. Tools and
tests use redis-py.

Callers may have commands in flight at the same time (an agent applies several partitions'
batches at once): each call writes its commands at once and waits for its own replies, which
one reader hands out in the order they come. A caller that gives up waiting leaves its replies
to be read and dropped, so the connection never gets out of step.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from pipeline.core.errors import FraudError

Arg = bytes | str | int | float


class RespError(Exception):
    """An error reply from the server (the server is fine, the command was not)."""


# Error replies that say the server cannot serve now (memory, loading, a long
# script, a failover, a lost group or function, an ACL user without a right its
# role needs), not that a command was wrong: they must never be taken for a
# poison entry, only waited out.
# MOVED and ASK reach a caller only when a cluster's nodes still disagree on a slot after the
# cluster client's retries (a slot being handed over): wait it out like a loading server.
SERVER_STATE_ERRORS = ("OOM", "LOADING", "BUSY", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "MOVED", "ASK",
                       "MISCONF", "NOGROUP", "NOSCRIPT", "ERR Function not found", "NOPERM")


def is_server_state_error(err: BaseException) -> bool:
    return isinstance(err, RespError) and str(err).startswith(SERVER_STATE_ERRORS)


class RespConnectionError(ConnectionError):
    """The connection failed or was closed under a command; its outcome is unknown."""


class RespAuthError(FraudError):
    """The server refused the URL's credentials or database: retrying will not help."""


def all_replies(replies: list[Any]) -> list[Any]:
    """A pipeline's replies, or the first error among them raised."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


async def one_command(pipeline: Callable[[Sequence[Sequence[Arg]]], Awaitable[list[Any]]],
                      args: Sequence[Arg]) -> Any:
    """One command through a client's pipeline: its reply, or its error raised."""
    (reply,) = all_replies(await pipeline([args]))
    return reply


class RespClient:
    def __init__(self, url: str, *, connect_timeout: float = 5.0, ssl_context: ssl.SSLContext | None = None) -> None:
        """``ssl_context`` for a ``rediss://`` URL (CA, client certificate); the system's CAs without one."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise FraudError(f"FRAUD_REDIS_URL must start with redis:// or rediss://, got {parts.scheme!r}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        # The same precedence as redis-py's from_url, which the tools use on the same URL:
        # user-info credentials over query ones, a query ``db`` over the path's.
        query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        self.username = unquote(parts.username) if parts.username else query.get("username")
        self.password = unquote(parts.password) if parts.password else query.get("password")
        try:
            self.db = int(query.get("db") or parts.path.lstrip("/") or 0)
        except ValueError:
            raise FraudError("the database in FRAUD_REDIS_URL must be a number") from None
        self.tls = parts.scheme == "rediss"
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser = hiredis.Reader(replyError=RespError)
        # Connecting and writing are one caller's at a time; replies are the reader's.
        self._lock = asyncio.Lock()
        # (how many replies, the future of their list) per call in flight, in the order sent.
        self._waiting: deque[tuple[int, asyncio.Future[list[Any]]]] = deque()
        self._reading: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self) -> None:
        context = (self.ssl_context or ssl.create_default_context()) if self.tls else None
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=context, limit=1 << 22),
                self.connect_timeout,
            )
        except (OSError, TimeoutError) as err:
            raise RespConnectionError(f"cannot connect to Redis at {self.host}:{self.port}: {err}") from err
        self._parser = hiredis.Reader(replyError=RespError)
        handshake: list[list[Arg]] = []
        if self.password is not None:
            handshake.append(["AUTH", self.password] if self.username is None else [
                "AUTH", self.username, self.password])
        if self.db:
            handshake.append(["SELECT", self.db])
        if not handshake:
            return
        # Straight on the new connection: the caller may hold the lock already (pipeline()
        # connects under it), so going through execute() would wait on itself forever.
        try:
            replies = await self._exchange(handshake)
        except (OSError, ConnectionError, asyncio.IncompleteReadError) as err:
            await self.close()
            raise RespConnectionError(f"connection to Redis lost while logging in: {err}") from err
        except BaseException:
            # Cancelled with the login's replies still to come: the next call would read them as its
            # own. The connection goes at once (no await: the caller is being cancelled).
            writer, self._writer, self._reader = self._writer, None, None
            if writer is not None:
                writer.close()
            raise
        for reply in replies:
            if isinstance(reply, RespError):
                await self.close()
                # The reply names no secret (WRONGPASS, NOAUTH, DB index out of range).
                raise RespAuthError(f"Redis at {self.host}:{self.port} refused the login: {reply}")

    async def close(self) -> None:
        reading, self._reading = self._reading, None
        if reading is not None and reading is not asyncio.current_task():
            reading.cancel()
        self._fail_waiting(RespConnectionError("connection to Redis closed"))
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ConnectionError):
                pass

    async def execute(self, *args: Arg) -> Any:
        return await one_command(self.pipeline, args)

    async def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Send all commands at once, return their replies in order (errors as RespError values)."""
        async with self._lock:
            if not self.connected:
                await self.connect()
            assert self._writer is not None
            replies: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
            self._waiting.append((len(commands), replies))
            try:
                self._writer.write(b"".join(hiredis.pack_command(tuple(c)) for c in commands))
            except (OSError, ConnectionError) as err:
                await self.close()
                raise RespConnectionError(f"connection to Redis lost: {err}") from err
            if self._reading is None:
                self._reading = asyncio.ensure_future(self._read_forever())
        return await replies

    async def _read_forever(self) -> None:
        """Hand each call in flight its replies, in order, until none is left or the connection ends."""
        try:
            while self._waiting:
                count, replies = self._waiting[0]
                got = await self._read_replies(count)
                self._waiting.popleft()
                if not replies.done():
                    replies.set_result(got)
        except Exception as err:  # the connection's end, or bytes that are not RESP: every caller must know
            self._reading = None
            self._fail_waiting(RespConnectionError(f"connection to Redis lost: {err}"))
            await self.close()
            return
        self._reading = None

    def _fail_waiting(self, err: Exception) -> None:
        waiting, self._waiting = self._waiting, deque()
        for _, replies in waiting:
            if not replies.done():
                replies.set_exception(err)

    async def _exchange(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        assert self._writer is not None and self._reader is not None
        self._writer.write(b"".join(hiredis.pack_command(tuple(c)) for c in commands))
        return await self._read_replies(len(commands))

    async def _read_replies(self, count: int) -> list[Any]:
        if self._reader is None:
            raise ConnectionError("connection closed")
        replies: list[Any] = []
        while len(replies) < count:
            reply = self._parser.gets()
            if reply is False:
                data = await self._reader.read(1 << 20)
                if not data:
                    raise ConnectionError("server closed the connection")
                self._parser.feed(data)
                continue
            replies.append(reply)
        return replies
