"""Supervising agent processes: each in a process of its own, restarted with back-off when it dies.

Each agent runs in a process of its own (as in production, and so that the stages use more
than one core); one that dies is restarted with back-off, and its restarts are counted. On a
stop request every agent is asked once to stop (SIGTERM) and given time for a graceful exit.
``fraud up`` (``pipeline/cli/up.py``) runs this beside its live view.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from pipeline.core.waiting import wait_or_stop

log = structlog.get_logger()

MAX_RESTART_DELAY_S = 30.0
# How often the supervisor looks for agents that exited.
SUPERVISE_INTERVAL_S = 0.2


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    last_exit: int | None = None
    next_start: float = 0.0
    started_at: float = 0.0
    delay: float = field(default=1.0)

    def start(self, env: dict[str, str], log_dir: Path) -> None:
        # Agents log to files of their own so that the live view stays readable, and
        # run in sessions of their own so that a terminal's Ctrl+C reaches only the
        # supervisor, which then asks each agent once to stop.
        with open(log_dir / f"{self.name}.log", "ab") as log_file:
            self.process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *self.argv], env=env,
                                            stdout=log_file, stderr=log_file, start_new_session=True)
        self.started_at = time.monotonic()
        log.info("agent process started", agent=self.name, pid=self.process.pid, restarts=self.restarts)

    def check(self, env: dict[str, str], log_dir: Path) -> None:
        """Restart the agent if it died, backing off while it keeps dying young."""
        now = time.monotonic()
        if self.process is None:
            if now >= self.next_start:
                self.start(env, log_dir)
            return
        code = self.process.poll()
        if code is None:
            return
        # A process that ran a while before dying starts over from a short delay.
        self.delay = 1.0 if now - self.started_at > 60 else min(MAX_RESTART_DELAY_S, self.delay * 2)
        self.restarts += 1
        self.last_exit = code
        self.process = None
        self.next_start = now + self.delay
        # The count, in the log and the live view, is what makes a crash loop visible.
        log.warning("agent process exited, restarting", agent=self.name, code=code, retry_in_s=self.delay,
                    restarts=self.restarts)

    def describe(self) -> str:
        """One phrase for the live view: up or waiting to restart, and how often it was restarted."""
        restarted = f" (restarted {self.restarts}x)" if self.restarts else ""
        if self.process is not None:
            return f"{self.name} up{restarted}"
        if self.last_exit is None:
            return f"{self.name} starting"
        wait = max(0.0, self.next_start - time.monotonic())
        return f"{self.name} exited {self.last_exit}, restart in {wait:.0f}s{restarted}"


async def supervise(children: list[Child], log_dir: Path, stop: asyncio.Event, shutdown_timeout_s: float) -> None:
    """Keep every child running until ``stop`` is set, then stop them all."""
    env = dict(os.environ, FRAUD_LOG_FORMAT=os.environ.get("FRAUD_LOG_FORMAT", "json"))
    log_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, before anything runs)
    log.info("agents log to files", folder=str(log_dir))
    try:
        while not stop.is_set():
            for child in children:
                child.check(env, log_dir)
            await wait_or_stop(stop, SUPERVISE_INTERVAL_S)
    finally:
        await stop_all(children, shutdown_timeout_s)


async def stop_all(children: list[Child], timeout: float) -> None:
    running = [c for c in children if c.process is not None and c.process.poll() is None]
    for child in running:
        assert child.process is not None
        child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in running:
        assert child.process is not None
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("agent did not stop in time, killing it", agent=child.name)
            child.process.kill()
            child.process.wait()
    log.info("pipeline stopped")
