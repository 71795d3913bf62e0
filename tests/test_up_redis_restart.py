"""Redis SIGKILLed and started again (or stopped dead) under the tools that watch the pipeline:
`fraud up` (with traffic through its agents), `fraud status --watch` and the monitor agent say Redis
is unreachable, resume by themselves and never exit; `fraud up` keeps its agents, and every click
has exactly one outcome."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest
import redis

from pipeline.client.producer import Partitioner
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.dev.server import EmbeddedRedis
from pipeline.ops import live_view
from pipeline.ops.status import open_status_client
from tests.accounting import check_exactly_once
from tests.outputs import pipeline_drained
from tests.procs import FAST_RECOVERY, PROJECT_ROOT, freeze_pid, stop_all, thaw_pid, wait_until
from tests.producer import Producer, check_each_click_judged_once

CLICKS = 30_000
RESTARTS = 2
AGENTS = ("detector-1", "aggregator-1", "monitor")


class Lines(threading.Thread):
    """Collects a child's output line by line, so a test can wait on what it printed."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.lines: list[str] = []

    def run(self) -> None:
        for line in self.stream:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, matches: Callable[[str], bool], after: int, timeout: float, what: str) -> int:
        """Index of the first line past ``after`` that matches, once printed."""
        found: list[int] = []

        def seen() -> bool:
            found[:] = [i for i in range(after, len(self.lines)) if matches(self.lines[i])][:1]
            return bool(found)

        wait_until(seen, timeout, f"{what} (last line: {self.lines[-1:]!r})")
        return found[0]


def fraud(url: str, home: Path, *argv: str, stderr: IO[bytes] | int = subprocess.PIPE) -> subprocess.Popen[str]:
    env = {**os.environ, "FRAUD_REDIS_URL": url, "FRAUD_HOME": str(home), **FAST_RECOVERY, "FRAUD_LOG_LEVEL": "info"}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *argv], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=stderr, text=True)


def agents_alive(line: str) -> bool:
    """The live view's line shows every agent's process running."""
    agents = line.partition("agents ")[2]
    return all(f"{name} up" in agents for name in AGENTS)


def verdict_count(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        return sum(int(client.xlen(part.verdicts)) for part in Keys().partitions(Settings().partitions))


def test_fraud_up_rides_out_two_redis_restarts(fresh_server: EmbeddedRedis, tmp_path: Path) -> None:
    url = fresh_server.url
    with open(tmp_path / "up.log", "wb") as up_log:
        up = fraud(url, tmp_path, "up", "--refresh", "0.2", stderr=up_log)
    assert up.stdout is not None
    view = Lines(up.stdout)
    view.start()
    # Open-ended until both restarts are done: traffic flows for certain while Redis dies.
    producer = Producer(url, None, pause_s=0.05)
    try:
        producer.start()
        for restart in range(RESTARTS):
            mark = len(view.lines)
            flowing = verdict_count(url) + 2000
            wait_until(lambda target=flowing: verdict_count(url) >= target, 60,
                       f"clicks flowing before restart {restart + 1}")
            alive = view.wait_for(agents_alive, mark, 30, "fraud up's agents all running")
            fresh_server.kill()
            down = view.wait_for(lambda line: line.startswith("redis       unreachable since"), alive, 30,
                                 "the live view to say Redis is unreachable")
            assert up.poll() is None, "fraud up exited while Redis was down"
            fresh_server.start()
            view.wait_for(lambda line: line.startswith("clicks in"), down, 60,
                          "the live view to show figures again after the restart")
        wait_until(lambda: len(producer.acknowledged) >= CLICKS, 120, f"{CLICKS} clicks sent")
        producer.finish()
        producer.join(60)
        assert not producer.is_alive()
        assert producer.retried_batches > 0, "the producer never saw a crash: nothing was tested"
        with redis.Redis.from_url(url) as client:
            settings = Settings(redis_url=url, home=tmp_path)
            wait_until(lambda: pipeline_drained(client, settings), 90, "the pipeline to drain after the restarts")
        assert up.poll() is None, "fraud up did not survive the restarts"
        # Every agent rode the restarts out by itself: the supervisor had nothing to restart.
        last = view.lines[view.wait_for(agents_alive, len(view.lines) - 1, 10, "a view line")]
        assert "restarted" not in last, last
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
    finally:
        producer.finish()
        stop_all([up])
    log = (tmp_path / "up.log").read_text()
    assert "Traceback" not in log
    assert log.count("redis unreachable, the live view retries every refresh") == RESTARTS
    assert log.count("redis reachable again") == RESTARTS

    out = check_exactly_once(settings)
    check_each_click_judged_once(out, producer)


def test_status_watch_rides_out_redis_restarts(fresh_server: EmbeddedRedis, tmp_path: Path) -> None:
    watch = fraud(fresh_server.url, tmp_path, "status", "--watch", "0.2", "--interval", "0")
    assert watch.stdout is not None and watch.stderr is not None
    reports, notes = Lines(watch.stdout), Lines(watch.stderr)
    reports.start()
    notes.start()
    try:
        for _ in range(RESTARTS):
            reports.wait_for(lambda line: line.startswith("fraud status "), len(reports.lines), 30, "a report")
            fresh_server.kill()
            down = notes.wait_for(lambda line: "unreachable since" in line, len(notes.lines), 30,
                                  "fraud status to say Redis is unreachable")
            fresh_server.start()
            notes.wait_for(lambda line: "reachable again after" in line, down, 30, "fraud status to say it is back")
            reports.wait_for(lambda line: line.startswith("fraud status "), len(reports.lines), 30,
                             "a report after the restart")
        assert watch.poll() is None, "fraud status --watch exited"
        watch.send_signal(signal.SIGINT)
        assert watch.wait(10) == 0
    finally:
        stop_all([watch])
    assert all(line.startswith("fraud status: Redis at ") for line in notes.lines), notes.lines


def test_monitor_rides_out_a_redis_restart(fresh_server: EmbeddedRedis, tmp_path: Path) -> None:
    monitor = fraud(fresh_server.url, tmp_path, "agent", "monitor", "--interval", "0.2")
    assert monitor.stderr is not None
    log = Lines(monitor.stderr)
    log.start()
    try:
        log.wait_for(lambda line: "monitor started" in line, 0, 30, "the monitor to start")
        fresh_server.kill()
        down = log.wait_for(lambda line: "redis unavailable, retrying next tick" in line, 0, 30,
                            "the monitor to log that Redis is unavailable")
        fresh_server.start()
        log.wait_for(lambda line: "redis reachable again" in line, down, 30, "the monitor to log that Redis is back")
        assert monitor.poll() is None, "the monitor exited"
        monitor.send_signal(signal.SIGTERM)
        assert monitor.wait(10) == 0
    finally:
        stop_all([monitor])
    assert not any("Traceback" in line for line in log.lines)


async def test_live_view_shows_a_hung_server_as_unreachable(
        fresh_server: EmbeddedRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The answering server's readings have all the time they need on a loaded machine: the timeout
    # only bounds "never" there. The short one is for the hung server's reading alone.
    monkeypatch.setattr(live_view, "READ_TIMEOUT_S", 60.0)
    settings = Settings(redis_url=fresh_server.url, home=tmp_path)
    client = await open_status_client(settings)
    out = io.StringIO()
    view = live_view.LiveView(client, Keys(), agents=lambda: ["detector-1 up"], out=out)
    pid = fresh_server.pid
    assert pid is not None
    try:
        await view.refresh()
        # Stopped, the server accepts nothing and answers nothing: a slow server at its slowest.
        try:
            freeze_pid(pid)
            with monkeypatch.context() as hung:
                hung.setattr(live_view, "READ_TIMEOUT_S", 0.5)
                await view.refresh()
        finally:
            thaw_pid(pid)
        await view.refresh()
    finally:
        await client.aclose()
    first, hung, back = out.getvalue().splitlines()
    assert first == "agents      detector-1 up"
    assert hung.startswith("redis       unreachable since ") and hung.endswith(
        "): no answer within 0.5 s | agents      detector-1 up"), hung
    assert back.startswith("clicks in   0 "), back


def test_generator_resends_across_a_redis_restart(fresh_server: EmbeddedRedis, tmp_path: Path) -> None:
    """The demo generator rides out a restart: the batch in flight is sent again, never lost."""
    # Open-ended (no --total): it is still sending when Redis dies, for certain, however late the test
    # gets to the kill (a total could all be sent by then); a SIGTERM ends it after the restart.
    generator = fraud(fresh_server.url, tmp_path, "agent", "generator", "--rate", "3000", "--seed", "5")
    assert generator.stderr is not None
    log = Lines(generator.stderr)
    log.start()
    try:
        with redis.Redis.from_url(fresh_server.url) as client:
            wait_until(lambda: client.xlen(Keys().raw) >= 1000, 30, "the generator to send 1000 clicks")
        fresh_server.kill()
        log.wait_for(lambda line: "redis unavailable, resending the batch" in line, 0, 30,
                     "the generator to meet the dead server")
        fresh_server.start()
        with redis.Redis.from_url(fresh_server.url) as client:
            more = client.xlen(Keys().raw) + 1000
            wait_until(lambda: client.xlen(Keys().raw) >= more, 30, "the generator to send 1000 clicks more")
        generator.send_signal(signal.SIGTERM)
        assert generator.wait(60) == 0
    finally:
        stop_all([generator])
    log.join(10)  # its output read to the end
    stopped = [json.loads(line) for line in log.lines if "generator stopped" in line]
    assert len(stopped) == 1, log.lines[-5:]
    with redis.Redis.from_url(fresh_server.url) as client:
        # appendfsync always: every acknowledged XADD survived; a resent batch may add some twice.
        assert client.xlen(Keys().raw) >= stopped[0]["sent"] > 0


def test_an_agent_started_before_its_redis_waits_for_it(fresh_server: EmbeddedRedis, tmp_path: Path) -> None:
    """Agents started while Redis is down (a restart, compose starting everything at once) wait for it
    and then work: the supervisor is not left to restart them in a loop."""
    fresh_server.kill()
    detector = fraud(fresh_server.url, tmp_path, "agent", "detector")
    assert detector.stderr is not None
    log = Lines(detector.stderr)
    log.start()
    try:
        log.wait_for(lambda line: "waiting for redis" in line, 0, 30, "the detector to wait for Redis")
        assert detector.poll() is None, "the detector gave up"
        fresh_server.start()
        with redis.Redis.from_url(fresh_server.url) as client:
            # Straight into the click's partition (as the producer API does): no router runs here.
            click = ["device_id", "d", "ip", "192.0.2.1", "ts", str(int(time.time() * 1000))]
            client.execute_command("XADD", Partitioner(Keys(), Settings().partitions).stream(click), "*", *click)
            wait_until(lambda: verdict_count(fresh_server.url) == 1, 30, "the detector to judge a click")
        detector.send_signal(signal.SIGTERM)
        assert detector.wait(30) == 0
    finally:
        stop_all([detector])
