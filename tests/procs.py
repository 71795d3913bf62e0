"""Agents as real subprocesses (``python -m pipeline.cli agent ...``), for fault-injection tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import redis

from pipeline.keys import AGGREGATOR_GROUP, DETECTOR_GROUP, Keys

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Quick reclaim and maintenance, so that a killed agent's entries come back within seconds.
FAST_RECOVERY = {
    "FRAUD_CLAIM_MIN_IDLE_MS": "1500",
    "FRAUD_MAINTENANCE_INTERVAL_MS": "500",
    "FRAUD_LOG_LEVEL": "warning",
    "FRAUD_LOG_FORMAT": "json",
}


def spawn_agent(redis_url: str, stage: str, consumer: str, env: Mapping[str, str] | None = None,
                *extra: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``fraud agent <stage> --consumer <consumer>`` against ``redis_url``."""
    full_env = dict(os.environ, FRAUD_REDIS_URL=redis_url, **FAST_RECOVERY, **(env or {}))
    argv = [sys.executable, "-m", "pipeline.cli", "agent", stage, "--consumer", consumer, *extra]
    if log is None:
        return subprocess.Popen(argv, env=full_env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    with open(log, "ab") as out:
        return subprocess.Popen(argv, env=full_env, cwd=PROJECT_ROOT, stdout=out, stderr=out)


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    """Kill whatever is still running of the processes this test started (by pid)."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
    for process in processes:
        process.wait(10)


def group_state(client: redis.Redis, stream: str, group: str) -> tuple[int | None, int] | None:
    """(lag, pending) of a group, or None while the group does not exist."""
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:
        return None
    for info in groups:
        name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
        if name == group:
            return info["lag"], info["pending"]
    return None


def pipeline_drained(client: redis.Redis, keys: Keys) -> bool:
    return (group_state(client, keys.raw, DETECTOR_GROUP) == (0, 0)
            and group_state(client, keys.verdicts, AGGREGATOR_GROUP) == (0, 0))


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
