"""A test session's servers are recorded by pid; the next session stops those a killed one left."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import orjson

from pipeline.dev.ports import free_port, free_ports
from pipeline.dev.server import EmbeddedRedis
from tests.conftest import LIBSSL_DIR, running
from tests.server_registry import REGISTRY, UNREADABLE_GRACE_S, boot_id, forget, started_at, stop_orphans


def write_record(registry: Path, pid: int, owner: int, owner_started: float | None, started: float | None,
                 boot: str | None = None) -> Path:
    registry.mkdir(parents=True, exist_ok=True)
    path = registry / str(pid)
    path.write_bytes(orjson.dumps({"owner": owner, "owner_started": owner_started, "started": started,
                                   "boot": boot_id() if boot is None else boot, "data_dir": "x"}))
    return path


def a_finished_process() -> tuple[int, float]:
    """The pid and start time of a process that has since ended: a session killed."""
    child = subprocess.Popen(["sleep", "30"])
    born = started_at(child.pid)
    assert born is not None
    child.kill()
    child.wait()
    return child.pid, born


def test_a_server_this_session_starts_is_recorded_until_it_stops(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, free_port(), libssl_dir=LIBSSL_DIR)
    with running(server):
        pid = server.pid
        assert pid is not None and (REGISTRY / str(pid)).exists()
    assert not (REGISTRY / str(pid)).exists()


def test_the_servers_of_a_killed_session_are_stopped_and_no_other(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    owner, owner_born = a_finished_process()
    orphan_port, kept_port = free_ports(2)
    orphan = EmbeddedRedis(tmp_path / "orphan", orphan_port, libssl_dir=LIBSSL_DIR)
    kept = EmbeddedRedis(tmp_path / "kept", kept_port, libssl_dir=LIBSSL_DIR)
    with running(orphan), running(kept):
        orphan_pid = orphan.pid
        assert orphan_pid is not None and kept.pid is not None
        orphaned = write_record(registry, orphan_pid, owner, owner_born, started_at(orphan_pid))
        # A live session's server (this one's) is its own; a record whose pid now names another
        # process (a start time that differs) is dropped without a signal.
        live = write_record(registry, kept.pid, 1, started_at(1), started_at(kept.pid))
        reused = write_record(registry, kept.pid + 100_000, owner, owner_born, 1)
        assert stop_orphans(registry) == [orphan_pid]
        assert not orphan.is_running() and kept.is_running()
        assert not orphaned.exists() and live.exists() and not reused.exists()
        forget(orphan_pid)  # this session's own record of it: stopped here, not by its fixture


def test_records_from_another_boot_or_half_written_are_never_acted_on(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    owner, owner_born = a_finished_process()
    server = EmbeddedRedis(tmp_path / "server", free_port(), libssl_dir=LIBSSL_DIR)
    with running(server):
        pid = server.pid
        assert pid is not None
        # The same pid and start time, recorded before a reboot: another process, dropped unsignalled.
        rebooted = write_record(registry, pid, owner, owner_born, started_at(pid), boot="another boot")
        # A record still being written by another session is left for it; an old unreadable one goes.
        writing = registry / "1"
        writing.write_bytes(b'{"owner": ')
        stale = registry / "2"
        stale.write_bytes(b"")
        old = time.time() - UNREADABLE_GRACE_S - 1
        os.utime(stale, (old, old))
        assert stop_orphans(registry) == []
        assert server.is_running()
        assert not rebooted.exists() and writing.exists() and not stale.exists()
