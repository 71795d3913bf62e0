"""SIGTERM on a working detector: a bounded, clean exit, and nothing lost or doubled afterwards."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from agents.pipeline import DETECTOR
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.dev.server import EmbeddedRedis
from tests.accounting import check_exactly_once
from tests.helpers import run_burst
from tests.outputs import lease_owners
from tests.procs import freeze, freeze_pid, spawn_agent, stop_all, thaw, thaw_pid, wait_until, waiting_on_frozen_server

SHUTDOWN_TIMEOUT_S = 2.0
# Interpreter teardown and the process' own exit, beyond the shutdown timeout.
SLACK_S = 3.0
# Info level: the tests follow the agent through its log.
ENV = {"FRAUD_SHUTDOWN_TIMEOUT_MS": str(int(SHUTDOWN_TIMEOUT_S * 1000)), "FRAUD_LOG_LEVEL": "info"}
BACKLOG = 60_000
# What the detector gets going on; the rest of the backlog comes while it is frozen, so that most of
# it is left when it meets the signal (or the hung Redis) whatever it had done by then: a detector
# stops within a read of every partition (8 x 500) of the signal, far less than the rest.
FIRST = 10_000


def load_backlog(url: str, n: int, start: int = 0) -> None:
    """Clicks start..n-1 on the raw stream, routed into the partitions (no router runs beside the detector)."""
    raw = Keys().raw
    with redis.Redis.from_url(url) as client:
        for first in range(start, n, 5000):
            pipe = client.pipeline(transaction=False)
            for i in range(first, min(n, first + 5000)):
                pipe.xadd(raw, {"device_id": f"dev-{i % 3000}", "ip": "192.0.2.1", "transaction_id": f"tx-{i}"})
            pipe.execute()
    asyncio.run(run_burst(Settings(redis_url=url), "router"))


def get_going_then_load_the_rest(url: str, process: subprocess.Popen[bytes]) -> None:
    """Once the detector has judged part of the first clicks, freeze it and load the rest of the
    backlog: it stays frozen (SIGCONT is the caller's), so the rest is certainly there to do."""
    with redis.Redis.from_url(url) as client:
        wait_until(lambda: verdict_count(client) > FIRST // 2, 60, "the detector to get going")
    freeze(process)
    load_backlog(url, BACKLOG, start=FIRST)


def verdict_count(client: redis.Redis) -> int:
    return sum(int(client.xlen(part.verdicts)) for part in Keys().partitions(Settings().partitions))


def committed(client: redis.Redis) -> list[tuple[int, int]]:
    """(partition, entries the detector group has committed) of every partition."""
    out = []
    for unit, part in enumerate(Keys().partitions(Settings().partitions)):
        groups = {g["name"]: g for g in client.xinfo_groups(part.input)} if client.exists(part.input) else {}
        group = groups.get(DETECTOR.name.encode())
        out.append((unit, int(group["entries-read"] or 0) if group else 0))
    return out


def wait_exit(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, float]:
    started = time.monotonic()
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the agent did not exit within {timeout:.1f} s")
    return code, time.monotonic() - started


def recover_and_check(settings: Settings, consumer: str) -> None:
    """A detector drains what is left (from each partition's committed offset); then every click of
    the backlog has exactly one verdict."""
    restarted = spawn_agent(settings.redis_url, "detector", consumer, ENV, "--burst")
    try:
        assert wait_exit(restarted, 90)[0] == 0
    finally:
        stop_all([restarted])
    out = check_exactly_once(settings, aggregated=False)
    assert len(out.verdicts) == BACKLOG


def test_sigterm_mid_backlog_exits_zero_and_loses_nothing(settings: Settings, tmp_path: Path) -> None:
    load_backlog(settings.redis_url, FIRST)
    process = spawn_agent(settings.redis_url, "detector", "d1", ENV, log=tmp_path / "agent.log")
    try:
        with redis.Redis.from_url(settings.redis_url) as client:
            get_going_then_load_the_rest(settings.redis_url, process)
            # Sent while it is stopped, the signal is taken as soon as it runs again.
            process.send_signal(signal.SIGTERM)
            thaw(process)
            code, _ = wait_exit(process, SHUTDOWN_TIMEOUT_S + SLACK_S)
            assert code == 0
            done = verdict_count(client)
            assert done < BACKLOG, "the backlog was finished before the signal: nothing was tested"
            # Its batch in hand committed, it handed its partitions over as it left.
            settings_here = Settings(redis_url=settings.redis_url)
            assert set(lease_owners(client, settings_here, DETECTOR.name).values()) == {""}, "leases kept"
            assert done == sum(state[1] for state in committed(client)), "verdicts and offsets disagree"
    finally:
        stop_all([process])
    recover_and_check(settings, "d2")


@pytest.mark.parametrize("signals", [1, 2], ids=["timeout", "second-signal"])
def test_shutdown_is_bounded_even_when_redis_hangs(freezable_server: EmbeddedRedis, tmp_path: Path,
                                                   signals: int) -> None:
    """Redis stops answering mid-batch: one SIGTERM exits after the shutdown timeout, two exit at once;
    the batch in hand stays uncommitted and is processed exactly once after a restart."""
    url = freezable_server.url
    load_backlog(url, FIRST)
    process = spawn_agent(url, "detector", "d1", ENV, log=tmp_path / "agent.log")
    pid = freezable_server.pid
    assert pid is not None
    try:
        get_going_then_load_the_rest(url, process)
        # Redis stopped before the detector runs again: from then on, whatever it sends, it waits on.
        freeze_pid(pid)
        thaw(process)
        wait_until(waiting_on_frozen_server(process.pid, freezable_server.port), 30,
                   "the detector to wait on the frozen Redis")
        process.send_signal(signal.SIGTERM)
        if signals == 2:
            # Two signals in one instant could reach the handler as one: send the second once the first was seen.
            wait_until(lambda: "stopping: finishing the batch in hand" in (tmp_path / "agent.log").read_text(), 30,
                       "the agent to take the first signal")
            process.send_signal(signal.SIGTERM)
            code, took = wait_exit(process, SLACK_S)
        else:
            code, took = wait_exit(process, SHUTDOWN_TIMEOUT_S + SLACK_S)
            assert took >= SHUTDOWN_TIMEOUT_S - 0.5, "it did not wait for the batch in hand"
        assert code == 1, "a cut-off batch must show in the exit status"
    finally:
        thaw_pid(pid)
        stop_all([process])
    log = (tmp_path / "agent.log").read_text()
    assert "batch not finished in time, cancelling" in log, "the agent was not cut off mid-batch"
    if signals == 2:
        assert "second signal, stopping at once" in log
    settings = Settings(redis_url=url, home=tmp_path)
    # What it held is uncommitted now, unless Redis, thawed, still ran the step it had been sent
    # (then it was applied and committed together): either way, exactly once below. Under the same
    # name, its own leases (still running) are taken at a new epoch at once.
    recover_and_check(settings, "d1")
