"""Every Redis server a test session starts, recorded by pid, so that the next session stops the ones
a session that was killed left running (a session that ends stops its own in its fixtures).

The servers are daemons: nothing ends them with the process that started them. Each record names
the session's process and the server, each with its start time and the
boot it belongs to, so that a reused pid is never mistaken for either: a record is acted on only
when its session is gone, and its server is signalled only while that very process still runs.
Only servers started in the session's own process are recorded (``EmbeddedRedis``), not those of
``fraud`` commands it runs as subprocesses.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import orjson
import psutil

from pipeline.dev.server import EmbeddedRedis

REGISTRY = Path(__file__).resolve().parent.parent / ".fraud" / "test-servers"
STOP_WAIT_S = 10.0
# A record that cannot be read yet may be one another session is writing: left alone this long.
UNREADABLE_GRACE_S = 60.0
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def started_at(pid: int) -> float | None:
    """The process's start time, or None when no such process runs (a zombie, ended and waiting for
    its parent to collect it, runs no more: as ``pipeline.dev.server`` sees it)."""
    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process.create_time()
    except psutil.NoSuchProcess:
        return None


def record(server: EmbeddedRedis) -> None:
    """Note a server this session just started (its pid and this session's)."""
    pid = server.pid
    if pid is None:
        return
    REGISTRY.mkdir(parents=True, exist_ok=True)
    entry = {"owner": os.getpid(), "owner_started": started_at(os.getpid()), "started": started_at(pid),
             "boot": boot_id(), "data_dir": str(server.data_dir)}
    # Whole or not at all, for another session reading the registry meanwhile.
    partial = REGISTRY / f".{pid}.{os.getpid()}"
    partial.write_bytes(orjson.dumps(entry))
    os.replace(partial, REGISTRY / str(pid))


def forget(pid: int | None) -> None:
    if pid is not None:
        (REGISTRY / str(pid)).unlink(missing_ok=True)


def stop_orphans(registry: Path = REGISTRY) -> list[int]:
    """Stop (SIGTERM, then SIGKILL) the recorded servers of sessions that no longer run; forget the
    records of servers gone already. Returns the pids it signalled."""
    stopped = []
    for path in sorted(registry.glob("[0-9]*")) if registry.is_dir() else []:
        pid = int(path.name)
        try:
            entry = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime > UNREADABLE_GRACE_S:
                    path.unlink()
            continue
        if entry.get("boot") != boot_id():
            path.unlink(missing_ok=True)  # from before a reboot: none of its processes runs
            continue
        if started_at(entry["owner"]) == entry["owner_started"]:
            continue  # that session still runs (another suite in parallel): its servers are its own
        if _stop(pid, entry["started"]):
            stopped.append(pid)
        path.unlink(missing_ok=True)
    return stopped


def _stop(pid: int, started: float) -> bool:
    """SIGTERM, then SIGKILL, the process `pid` if it is the one that started at `started`; whether
    it was. Through a pidfd opened before that check, so a pid reused meanwhile is never signalled."""
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        if started_at(pid) != started:
            return False
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(handle, sig)
            deadline = time.monotonic() + STOP_WAIT_S
            while time.monotonic() < deadline:
                if started_at(pid) != started:
                    return True
                time.sleep(0.05)
        return True
    finally:
        os.close(handle)


def register_every_server() -> None:
    """From now on in this process, every EmbeddedRedis started is recorded and forgotten once stopped."""
    start, stop, kill = EmbeddedRedis.start, EmbeddedRedis.stop, EmbeddedRedis.kill

    def recorded_start(self: EmbeddedRedis, *args: object, **kwargs: object) -> None:
        start(self, *args, **kwargs)  # type: ignore[arg-type]
        record(self)

    def forgotten_stop(self: EmbeddedRedis, *args: object, **kwargs: object) -> None:
        pid = self.pid
        stop(self, *args, **kwargs)  # type: ignore[arg-type]
        forget(pid)

    def forgotten_kill(self: EmbeddedRedis) -> None:
        pid = self.pid
        kill(self)
        forget(pid)

    EmbeddedRedis.start = recorded_start  # type: ignore[method-assign]
    EmbeddedRedis.stop = forgotten_stop  # type: ignore[method-assign]
    EmbeddedRedis.kill = forgotten_kill  # type: ignore[method-assign]
