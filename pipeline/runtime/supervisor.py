"""``fraud up``: every agent of the pipeline in one command, supervised.

Each agent runs in a process of its own (as in production, and so that the
stages use more than one core); one that dies is restarted with backoff. The
supervisor prints what the pipeline does, live, until Ctrl+C or SIGTERM, which
it passes on to every agent and waits for their graceful exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from pipeline.cli.args import positive_float, positive_int
from pipeline.client.connection import open_redis
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.core.waiting import wait_or_stop
from pipeline.ops.live_view import LiveView
from pipeline.ops.status import open_status_client

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


def plan(args: argparse.Namespace) -> list[Child]:
    children = [Child(f"detector-{i + 1}", ["agent", "detector"]) for i in range(args.detectors)]
    children += [Child(f"aggregator-{i + 1}", ["agent", "aggregator"]) for i in range(args.aggregators)]
    children.append(Child("monitor", ["agent", "monitor"]))
    if args.demo:
        children.append(Child("generator", ["agent", "generator", "--rate", str(args.rate)]))
    return children


async def load_demo_blacklist(settings: Settings) -> int:
    from agents.generator import blacklisted_ips
    from pipeline.ops.blacklist import add_ips

    client = await open_redis(settings)
    try:
        return await add_ips(client, Keys(settings.namespace), settings, blacklisted_ips())
    finally:
        await client.aclose()


async def run_up(args: argparse.Namespace, settings: Settings) -> int:
    client = await open_status_client(settings)  # fails early, in one line, when Redis is not there
    if args.demo:
        added = await load_demo_blacklist(settings)
        log.info("demo blacklist loaded", addresses=added)
    children = plan(args)
    env = dict(os.environ, FRAUD_LOG_FORMAT=os.environ.get("FRAUD_LOG_FORMAT", "json"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    log_dir = settings.home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log.info("agents log to files", folder=str(log_dir))
    view = LiveView(client, Keys(settings.namespace), agents=lambda: [c.describe() for c in children])
    # The view runs beside the supervision, never in its way: a reading that hangs on a slow
    # server or fails on a restarted one cannot delay a restart, nor end the agents.
    view_task = asyncio.create_task(view.run(stop, args.refresh))
    try:
        while not stop.is_set():
            for child in children:
                child.check(env, log_dir)
            await wait_or_stop(stop, SUPERVISE_INTERVAL_S)
    finally:
        view_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await view_task
        await _stop_all(children, settings.shutdown_timeout_ms / 1000 + 5)
        await client.aclose()
    return 0


async def _stop_all(children: list[Child], timeout: float) -> None:
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


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("up", help="run the whole pipeline, supervised, until Ctrl+C")
    parser.add_argument("--demo", action="store_true",
                        help="add synthetic traffic (humans, bot bursts, blacklisted IPs, retries, malformed)")
    parser.add_argument("--rate", type=positive_float, default=300.0, help="demo clicks per second")
    parser.add_argument("--detectors", type=positive_int, default=1)
    parser.add_argument("--aggregators", type=positive_int, default=1)
    parser.add_argument("--refresh", type=positive_float, default=1.0, help="seconds between live updates")
    parser.set_defaults(run=run_up)
