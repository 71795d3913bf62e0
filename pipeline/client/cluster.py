"""The agents' hot-path client on a Redis Cluster: one ``RespClient`` per node, behind the same
interface (``execute``, ``pipeline``, ``close``, ``connected``).

Each command goes to the master serving its key's slot (the CRC16 of the key's hash tag, as every
cluster client computes it); a pipeline's commands are sent grouped by node, every node's group at
once, and the replies are put back in the caller's order. The slot map is read with ``CLUSTER
SLOTS`` and read again after a ``MOVED`` reply (a slot moved for good: resharding, failover) or a
lost node; the refused commands are then sent again, which is safe because a redirected command
was not run. An ``ASK`` reply (a slot being migrated, this key already moved) is followed once:
``ASKING`` then the command, on the target node, without touching the map.

A command's key decides its node; for ``FCALL`` it is the first key, and a step's keys share one
hash tag by design (``pipeline/core/keys.py``). A command without a key goes to the first master;
what must run on every master (``FUNCTION LOAD``) uses ``masters()``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.crc import key_slot

from pipeline.client.resp import Arg, RespClient, RespConnectionError, RespError, one_command
from pipeline.core.replies import pairs

SLOTS = 16384
# Redirections followed for one command before its last error reply is handed back: a slot moves
# once per resharding step, so more than a few in a row means the cluster is still changing.
MAX_REDIRECTS = 5

Address = tuple[str, int]

# Commands whose key is not their first argument, or that have none.
KEY_AFTER_SUBCOMMAND = frozenset({"XINFO", "XGROUP", "OBJECT", "MEMORY"})
KEY_AFTER_NUMKEYS = frozenset({"FCALL", "FCALL_RO", "EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO"})
STREAMS_COMMANDS = frozenset({"XREAD", "XREADGROUP"})
KEYLESS = frozenset({"PING", "ECHO", "TIME", "INFO", "MODULE", "FUNCTION", "SCRIPT", "CLUSTER", "CONFIG",
                     "CLIENT", "COMMAND", "ACL", "AUTH", "SELECT", "SCAN", "DBSIZE", "FLUSHALL", "FLUSHDB",
                     "WAIT", "LATENCY", "SLOWLOG", "TS.MRANGE", "TS.MREVRANGE", "TS.MGET", "TS.QUERYINDEX",
                     "TIMESERIES.REFRESHCLUSTER"})


def _text(value: Arg) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def command_key(args: Sequence[Arg]) -> Arg | None:
    """The key whose slot decides where the command runs, or None for a command without one."""
    name = _text(args[0]).upper()
    if name in KEYLESS:
        return None
    if name in KEY_AFTER_NUMKEYS:
        return args[3] if len(args) > 3 and int(args[2]) > 0 else None
    if name in STREAMS_COMMANDS:
        for at, arg in enumerate(args):
            if _text(arg).upper() == "STREAMS":
                return args[at + 1]
        return None
    if name in KEY_AFTER_SUBCOMMAND:
        return args[2] if len(args) > 2 else None
    return args[1] if len(args) > 1 else None


def slot_of(key: Arg) -> int:
    return int(key_slot(key if isinstance(key, bytes) else str(key).encode()))


def _redirect(reply: Any) -> tuple[str, Address] | None:
    """("MOVED" or "ASK", the node to go to) for a redirection reply, else None."""
    if not isinstance(reply, RespError):
        return None
    words = str(reply).split()
    if len(words) != 3 or words[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = words[2].rpartition(":")
    return words[0], (host, int(port))


class ClusterClient:
    def __init__(self, seed: RespClient, url: str, ssl_context: ssl.SSLContext | None = None) -> None:
        """``seed``: a client of one node, connected or not; ``url`` its URL, whose credentials and
        options every other node's client reuses."""
        self.url = url
        self.ssl_context = ssl_context
        self.nodes: dict[Address, RespClient] = {(seed.host, seed.port): seed}
        self._slots: list[Address] = []
        self._stale = True
        self._refreshing = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return any(node.connected for node in self.nodes.values())

    async def close(self) -> None:
        for node in list(self.nodes.values()):
            await node.close()

    def masters(self) -> list[RespClient]:
        """One client per master serving slots (the map must have been read: ``refresh``)."""
        return [self._client(address) for address in dict.fromkeys(self._slots)]

    async def execute(self, *args: Arg) -> Any:
        return await one_command(self.pipeline, args)

    async def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Every command's reply, in order (errors as RespError values), each run on its slot's node."""
        replies: list[Any] = [None] * len(commands)
        pending = list(range(len(commands)))
        asking: dict[int, Address] = {}
        for round_ in range(MAX_REDIRECTS + 1):
            if round_ > 1:
                # Redirected again after a fresh map: the nodes disagree for a moment (the target of
                # a moved slot has not taken it yet). Let them settle rather than bounce at once.
                await asyncio.sleep(0.01 * round_)
            if self._stale:
                await self.refresh()
            redirected = []
            for index, reply in await self._send(commands, pending, asking):
                redirect = _redirect(reply)
                replies[index] = reply
                if redirect is None:
                    continue
                kind, address = redirect
                redirected.append(index)
                if kind == "MOVED":
                    self._stale = True
                    asking.pop(index, None)
                else:
                    asking[index] = address
            if not redirected:
                break
            pending = redirected
        return replies

    async def refresh(self) -> None:
        """Read the slot map from the first node that answers."""
        async with self._refreshing:
            if not self._stale:
                return  # another caller read it while this one waited
            failures = []
            for address, node in list(self.nodes.items()):
                try:
                    layout = await node.execute("CLUSTER", "SLOTS")
                except (RespConnectionError, OSError) as err:
                    failures.append(f"{address[0]}:{address[1]}: {err}")
                    continue
                self._slots = _slot_map(layout, default=address)
                self._stale = False
                return
            raise RespConnectionError("no node of the cluster answered CLUSTER SLOTS: " + "; ".join(failures))

    async def _send(self, commands: Sequence[Sequence[Arg]], indexes: list[int],
                    asking: dict[int, Address]) -> list[tuple[int, Any]]:
        """Send the commands at ``indexes``, each node's share at once; (index, reply) pairs."""
        groups: dict[Address, list[int]] = {}
        for index in indexes:
            groups.setdefault(asking.get(index) or self._address(commands[index]), []).append(index)
        outcomes = await asyncio.gather(
            *(self._send_to(address, [commands[i] for i in group], [i in asking for i in group])
              for address, group in groups.items()), return_exceptions=True)
        out: list[tuple[int, Any]] = []
        failure: BaseException | None = None
        for group, outcome in zip(groups.values(), outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if isinstance(outcome, RespConnectionError | OSError):
                    # A node gone (killed, failed over): the map may have changed with it.
                    self._stale = True
                failure = failure or outcome
                continue
            out += zip(group, outcome, strict=True)
        if failure is not None:
            raise failure
        return out

    async def _send_to(self, address: Address, commands: list[Sequence[Arg]], asking: list[bool]) -> list[Any]:
        if not any(asking):
            return await self._client(address).pipeline(commands)
        wire: list[Sequence[Arg]] = []
        for command, ask in zip(commands, asking, strict=True):
            wire += [("ASKING",), command] if ask else [command]
        replies = await self._client(address).pipeline(wire)
        out, at = [], 0
        for ask in asking:
            at += 1 if ask else 0
            out.append(replies[at])
            at += 1
        return out

    def node_of(self, key: Arg) -> Address:
        """The address of the master serving ``key``'s slot, as the map last read says."""
        return self._slots[slot_of(key)]

    def _address(self, command: Sequence[Arg]) -> Address:
        key = command_key(command)
        if key is None:
            return self._slots[0]
        return self.node_of(key)

    def _client(self, address: Address) -> RespClient:
        node = self.nodes.get(address)
        if node is None:
            parts = urlsplit(self.url)
            credentials = parts.netloc.rpartition("@")[0]
            host = f"[{address[0]}]" if ":" in address[0] else address[0]
            netloc = (credentials + "@" if credentials else "") + f"{host}:{address[1]}"
            node = self.nodes[address] = RespClient(urlunsplit(parts._replace(netloc=netloc)),
                                                    ssl_context=self.ssl_context)
        return node


def _slot_map(layout: Any, default: Address) -> list[Address]:
    """slot -> its master's address, from a CLUSTER SLOTS reply. A node that reports an empty host
    (it does not know the address it is reached by) is the node asked."""
    slots = [default] * SLOTS
    for start, end, master, *_replicas in layout:
        host = _text(master[0]) or default[0]
        address = (host, int(master[1]))
        for slot in range(int(start), int(end) + 1):
            slots[slot] = address
    return slots


async def open_cluster_client(seed: RespClient, url: str, ssl_context: ssl.SSLContext | None) -> ClusterClient:
    client = ClusterClient(seed, url, ssl_context)
    await client.refresh()
    return client


def every_master(client: RespClient | ClusterClient) -> list[RespClient]:
    """The clients of every master (a single server: itself), for what each must hold (the library)."""
    return client.masters() if isinstance(client, ClusterClient) else [client]


async def is_cluster_node(client: RespClient) -> bool:
    """Whether the server is a node of a Redis Cluster: HELLO's ``mode``, which every user may ask
    (INFO is not every ACL user's)."""
    return pairs(await client.execute("HELLO")).get(b"mode") == b"cluster"
