"""`fraud up`'s supervisor: an agent that keeps crashing is restarted ever later, and counted where
people look (the live view's agents line and the log), so a crash loop is seen, not hidden."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from pipeline.core.log import configure_logging
from pipeline.core.settings import Settings
from pipeline.dev.ports import free_port
from pipeline.runtime.supervisor import Child
from tests.procs import wait_until


def test_a_crash_loop_backs_off_and_is_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="json"))
    # A bad argument: the agent exits 2 as soon as it starts, every time. (An agent waits for a
    # Redis that is away, so an unreachable one would not make it crash.)
    env = {**os.environ, "FRAUD_REDIS_URL": f"redis://127.0.0.1:{free_port()}"}
    child = Child("monitor", ["agent", "monitor", "--interval", "0"])
    delays: list[float] = []
    views: list[str] = []

    def supervise() -> bool:
        child.check(env, tmp_path)
        if child.restarts > len(delays):
            delays.append(child.delay)
            views.append(child.describe())
        return child.restarts >= 2

    try:
        wait_until(supervise, 60, "two restarts")
    finally:
        if child.process is not None:
            child.process.kill()
            child.process.wait()
    # Each death came young: the wait doubles.
    assert delays == [2.0, 4.0]
    assert views == ["monitor exited 2, restart in 2s (restarted 1x)", "monitor exited 2, restart in 4s (restarted 2x)"]
    events = [orjson.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    exits = [(e["restarts"], e["retry_in_s"], e["code"])
             for e in events if e["event"] == "agent process exited, restarting"]
    assert exits == [(1, 2.0, 2), (2, 4.0, 2)]
    assert "argument --interval" in (tmp_path / "monitor.log").read_text()
