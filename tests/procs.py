"""Agents as real subprocesses (``python -m pipeline.cli agent ...``), for fault-injection tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil
import redis

from agents.pipeline import PIPELINE
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from tests.outputs import group_state, lease_owners

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Quick reclaim and maintenance, so that a killed agent's entries come back within seconds.
FAST_RECOVERY = {
    "FRAUD_LEASE_MS": "1500",
    "FRAUD_MAINTENANCE_INTERVAL_MS": "500",
    "FRAUD_LOG_LEVEL": "warning",
    "FRAUD_LOG_FORMAT": "json",
}


def spawn_agent(redis_url: str, stage: str, consumer: str, env: Mapping[str, str] | None = None,
                *extra: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``fraud agent <stage> --consumer <consumer>`` against ``redis_url``."""
    full_env = {**os.environ, "FRAUD_REDIS_URL": redis_url, **FAST_RECOVERY, **(env or {})}
    argv = [sys.executable, "-m", "pipeline.cli", "agent", stage, "--consumer", consumer, *extra]
    if log is None:
        return subprocess.Popen(argv, env=full_env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    with open(log, "ab") as out:
        return subprocess.Popen(argv, env=full_env, cwd=PROJECT_ROOT, stdout=out, stderr=out)


def stop_all(processes: list[subprocess.Popen[Any]]) -> None:
    """Kill whatever is still running of the processes this test started, and of theirs (by pid):
    `fraud up` starts its agents in sessions of their own, which would outlive it."""
    for process in processes:
        if process.poll() is None:
            try:
                descendants = psutil.Process(process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                descendants = []
            process.send_signal(signal.SIGKILL)
            for child in descendants:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
    for process in processes:
        process.wait(10)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def freeze(process: subprocess.Popen[bytes]) -> None:
    """SIGSTOP the process and wait until it is stopped: from then on it sends Redis nothing."""
    freeze_pid(process.pid)


def freeze_pid(pid: int) -> None:
    """freeze for a process of a pid (a server): a signal just sent may not have stopped it yet, and
    each of its threads (a server's I/O threads, say) stops on its own."""
    os.kill(pid, signal.SIGSTOP)

    def every_thread_stopped() -> bool:
        return all(psutil.Process(thread.id).status() == psutil.STATUS_STOPPED
                   for thread in psutil.Process(pid).threads())
    wait_until(every_thread_stopped, 10, f"process {pid} to stop")


def thaw(process: subprocess.Popen[bytes]) -> None:
    """SIGCONT a frozen process (none once it has been waited for: its pid may be another's by then)."""
    process.send_signal(signal.SIGCONT)


def thaw_pid(pid: int) -> None:
    """thaw for a process of a pid (a server)."""
    os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def frozen(*processes: subprocess.Popen[bytes]) -> Iterator[None]:
    """These processes frozen for the block, and thawed after it whatever happens (those still alive)."""
    try:
        for process in processes:
            freeze(process)
        yield
    finally:
        for process in processes:
            if process.poll() is None:
                thaw(process)


def client_ids_of(node: redis.Redis, pid: int) -> set[int]:
    """The CLIENT LIST ids of a frozen process's open connections to this server, once the server
    lists them all (one the kernel has set up may not be accepted yet). An id is never reused while
    the server runs; a peer address is: a port freed by a killed process may soon be another
    connection's, and a port used towards another server may be in this server's list at once."""
    port = node.connection_pool.connection_kwargs["port"]
    addrs = {f"{c.laddr.ip}:{c.laddr.port}" for c in psutil.Process(pid).net_connections("tcp")
             if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED}
    ids: dict[str, int] = {}

    def all_listed() -> bool:
        ids.update({c["addr"]: int(c["id"]) for c in node.client_list() if c["addr"] in addrs})
        return len(ids) == len(addrs)
    wait_until(all_listed, 10, f"the server to list every connection of process {pid}: {sorted(addrs)}")
    return set(ids.values())


def still_open(node: redis.Redis, ids: set[int]) -> set[int]:
    """Which of these client ids the server still has open."""
    return ids & {int(c["id"]) for c in node.client_list()}


def kill_and_settle_on(nodes: list[redis.Redis], process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process, then wait until every node has closed its connections: Redis reads a
    closed socket to its end first, so whatever the process had sent has been executed by then.
    Frozen first, it opens no connection between the count of its connections and the kill."""
    freeze(process)
    ids = [client_ids_of(node, process.pid) for node in nodes]
    process.kill()
    process.wait()
    wait_until(lambda: not any(still_open(node, mine) for node, mine in zip(nodes, ids, strict=True)), 10,
               f"Redis to close the killed process's connections {ids}")


def kill_and_settle(client: redis.Redis, process: subprocess.Popen[bytes]) -> None:
    """kill_and_settle_on for one server."""
    kill_and_settle_on([client], process)


def bytes_unread_by_server(port: int) -> int:
    """Bytes that clients sent to the local server on ``port`` and that it has not read yet (from the
    kernel's socket table): with the server frozen, a client that is waiting on a reply shows here."""
    unread = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port:
            unread += int(fields[4].split(":")[1], 16)
    return unread


def waiting_on_frozen_server(pid: int, port: int, still_s: float = 1.0) -> Callable[[], bool]:
    """A condition for wait_until: the client process ``pid`` waits on the frozen server at ``port``.

    Either the server has unread bytes (a command sent after it froze), or the client has used no
    CPU for ``still_s`` (the server had read its command before freezing and will not answer): a
    client with work in hand is idle that long only when it waits on the server."""
    process = psutil.Process(pid)
    last = {"cpu": -1.0, "since": time.monotonic()}

    def waiting() -> bool:
        if bytes_unread_by_server(port) > 0:
            return True
        times = process.cpu_times()
        cpu = times.user + times.system
        if cpu != last["cpu"]:
            last["cpu"], last["since"] = cpu, time.monotonic()
        return time.monotonic() - last["since"] >= still_s

    return waiting


def uncommitted_owned(client: redis.Redis, settings: Settings, stage: str, member: str) -> int:
    """Entries in the partitions whose lease `member` holds that the stage has not committed yet:
    killing the member then leaves work that only its partitions' next owners can do."""
    keys = Keys(settings.namespace)
    declared = next(s for s in PIPELINE if s.name == stage)
    total = 0
    for unit, owner in lease_owners(client, settings, stage).items():
        if owner != member:
            continue
        stream = declared.input_stream(keys, unit)
        state = group_state(client, stream, stage)
        # A partition leased but not yet started on (its group not made: the member was stopped
        # between taking the lease and reading the offset) has all of its entries uncommitted.
        total += int(client.xlen(stream)) if state is None else (state[0] or 0)
    return total
