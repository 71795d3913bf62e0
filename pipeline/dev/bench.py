"""``fraud bench``: push N clicks through every stage and report what it took.

It starts an embedded Redis Stack of its own (unless ``--use-running``), then a
producer, detectors and aggregators as separate processes, as in production,
and waits until every click is counted. Reported: end-to-end clicks/s (first
XADD to last count), latency from XADD to verdict (entry id times), CPU per
click of every process including Redis, and Redis memory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import psutil
import redis

from agents.pipeline import PIPELINE
from pipeline.client.connection import open_fast_client
from pipeline.client.functions import library_source
from pipeline.client.resp import RespClient
from pipeline.core.keys import Keys
from pipeline.core.replies import pairs, text_pairs
from pipeline.core.settings import Settings
from pipeline.core.stream_ids import parse_id


@dataclass
class StageProcess:
    name: str
    process: psutil.Popen


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def bench_server(settings: Settings, use_running: bool, aof: bool = True) -> Iterator[Settings]:
    """A fresh embedded server for one run; ``aof=False`` measures the pipeline without persistence."""
    if use_running:
        yield settings
        return
    from pipeline.dev.server import EmbeddedRedis

    with tempfile.TemporaryDirectory(prefix="fraud-bench-") as home:
        server = EmbeddedRedis(Path(home), _free_port(), appendfsync=settings.appendfsync,
                               libssl_dir=settings.home / "libssl")
        server.start()
        with redis.Redis.from_url(server.url) as admin:
            # The set-up step (`fraud setup`) the agents expect done.
            admin.function_load(library_source(), replace=True)
            if not aof:
                admin.config_set("appendonly", "no")
        try:
            yield replace(settings, redis_url=server.url, home=Path(home))
        finally:
            server.stop()


def spawn_cli(settings: Settings, consumer: str, *argv: str, env: Mapping[str, str] | None = None,
              stdout: int | None = None) -> psutil.Popen:
    """A ``fraud`` command in a process of its own, on these settings, logging only warnings."""
    full_env = dict(os.environ, FRAUD_REDIS_URL=settings.redis_url, FRAUD_NAMESPACE=settings.namespace,
                    FRAUD_LOG_FORMAT="json", FRAUD_LOG_LEVEL="warning", FRAUD_HOME=str(settings.home),
                    FRAUD_CONSUMER=consumer, **(env or {}))
    return psutil.Popen([sys.executable, "-m", "pipeline.cli", *argv], env=full_env, stdout=stdout)


def _spawn(name: str, settings: Settings, *argv: str, stdout: int | None = None) -> StageProcess:
    return StageProcess(name, spawn_cli(settings, f"bench-{name}", *argv, stdout=stdout))


async def group_drained(client: RespClient, stream: str, group: str) -> bool:
    for info in await client.execute("XINFO", "GROUPS", stream):
        fields = pairs(info)
        if fields[b"name"].decode() == group:
            return fields[b"pending"] == 0 and fields[b"lag"] == 0
    return False


async def pipeline_drained(client: RespClient, keys: Keys) -> bool:
    """Every stage's group has read and acknowledged everything on its input stream."""
    for stage in PIPELINE:
        if not await group_drained(client, stage.input_stream(keys), stage.name):
            return False
    return True


async def _wait_until_counted(client: RespClient, keys: Keys, producer: StageProcess,
                              timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if producer.process.poll() is not None and await pipeline_drained(client, keys):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the pipeline did not finish in time")


async def _latencies_ms(client: RespClient, stream: str) -> list[int]:
    latencies: list[int] = []
    start = "-"
    while True:
        entries = await client.execute("XRANGE", stream, start, "+", "COUNT", 10_000)
        if not entries:
            return latencies
        for entry_id, flat in entries:
            raw_id = flat[flat.index(b"raw_id") + 1]
            latencies.append(parse_id(entry_id)[0] - parse_id(raw_id)[0])
        start = "(" + entries[-1][0].decode()


def _percentile(values: list[int], fraction: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]) if ordered else 0.0


async def info_fields(client: RespClient, section: str) -> dict[str, str]:
    info = (await client.execute("INFO", section)).decode()
    return dict(line.split(":", 1) for line in info.splitlines() if ":" in line)


async def _redis_cpu_s(client: RespClient) -> float:
    fields = await info_fields(client, "cpu")
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


async def read_counters(client: RespClient, keys: Keys) -> dict[str, int]:
    flat = await client.execute("HGETALL", keys.stats)
    return {name: int(value) for name, value in text_pairs(flat).items()}


async def _bench(args: argparse.Namespace, settings: Settings) -> int:
    keys = Keys(settings.namespace)
    client = await open_fast_client(settings)
    await client.execute("DEL", keys.raw, keys.verdicts, keys.dead, keys.stats)
    stages = [_spawn(f"detector-{i}", settings, "agent", "detector") for i in range(args.detectors)]
    stages += [_spawn(f"aggregator-{i}", settings, "agent", "aggregator") for i in range(args.aggregators)]
    for stage in PIPELINE:
        while not await _group_exists(client, stage.input_stream(keys), stage.name):
            await asyncio.sleep(0.05)
    redis_cpu = await _redis_cpu_s(client)
    # Start-up (imports, connecting) is not per-click work: count only what comes after it.
    start_cpu = {stage.name: _cpu_s(stage) for stage in stages}
    started = time.time()
    producer = _spawn("producer", settings, "agent", "generator", "--rate", str(args.rate), "--pregenerate",
                      "--total", str(args.clicks), "--seed", "7", stdout=subprocess.PIPE)
    stages.append(producer)
    cpu: dict[str, float] = {}
    try:
        await _wait_until_counted(client, keys, producer, args.timeout)
        finished = time.time()
        for stage in stages:
            if stage.process.poll() is None:
                cpu[stage.name] = _cpu_s(stage) - start_cpu.get(stage.name, 0.0)
        redis_cpu = await _redis_cpu_s(client) - redis_cpu
        assert producer.process.stdout is not None
        cpu["producer"] = orjson.loads(producer.process.stdout.read())["send_cpu_s"]
    finally:
        for stage in stages:
            if stage.process.poll() is None:
                stage.process.terminate()
        for stage in stages:
            stage.process.wait(30)
    first_raw = await client.execute("XRANGE", keys.raw, "-", "+", "COUNT", 1)
    if first_raw:
        started = parse_id(first_raw[0][0])[0] / 1000
    latencies = await _latencies_ms(client, keys.verdicts)
    stats = await read_counters(client, keys)
    memory = int((await client.execute("MEMORY", "STATS"))[1])
    persistence = await _persistence(client)
    await client.close()
    _report(args, started, finished, latencies, cpu, redis_cpu, stats, memory, persistence)
    return 0


async def _persistence(client: RespClient) -> str:
    aof = (await client.execute("CONFIG", "GET", "appendonly"))[1] == b"yes"
    fsync = (await client.execute("CONFIG", "GET", "appendfsync"))[1].decode()
    return f"AOF appendfsync {fsync}" if aof else "without AOF"


def _cpu_s(stage: StageProcess) -> float:
    times = stage.process.cpu_times()
    return float(times.user + times.system)


async def _group_exists(client: RespClient, stream: str, group: str) -> bool:
    if not await client.execute("EXISTS", stream):
        return False
    return any(text_pairs(g)["name"] == group
               for g in await client.execute("XINFO", "GROUPS", stream))


def _report(args: argparse.Namespace, started: float, finished: float, latencies: list[int],
            cpu: dict[str, float], redis_cpu: float, stats: dict[str, int], memory: int,
            persistence: str) -> None:
    clicks = args.clicks
    elapsed = finished - started
    result: dict[str, Any] = {
        "clicks": clicks,
        "seconds": round(elapsed, 3),
        "clicks_per_s": round(clicks / elapsed),
        "latency_ms_p50": _percentile(latencies, 0.50),
        "latency_ms_p99": _percentile(latencies, 0.99),
        "cpu_us_per_click": {name: round(s / clicks * 1e6, 1) for name, s in sorted(cpu.items())}
        | {"redis": round(redis_cpu / clicks * 1e6, 1)},
        "verdicts": {k.split(".", 1)[1]: v for k, v in stats.items() if k.startswith("detector.")},
        "counted": stats.get("aggregator.counted", 0),
        "redis_memory_bytes": memory,
        "persistence": persistence,
    }
    if args.json:
        print(orjson.dumps(result).decode())
        return
    print(f"{clicks} clicks end to end in {elapsed:.2f} s: {result['clicks_per_s']:,} clicks/s"
          f" ({args.detectors} detector(s), {args.aggregators} aggregator(s), Redis {persistence})")
    print(f"latency XADD -> verdict: p50 {result['latency_ms_p50']:.0f} ms, "
          f"p99 {result['latency_ms_p99']:.0f} ms")
    print("CPU per click (us): " + ", ".join(f"{k} {v}" for k, v in result["cpu_us_per_click"].items()))
    print("verdicts: " + ", ".join(f"{k} {v}" for k, v in result["verdicts"].items())
          + f"; counted {result['counted']}")
    print(f"Redis memory: {memory / 2**20:.1f} MiB")
