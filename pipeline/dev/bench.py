"""``fraud bench``: push N clicks through every stage and report what it took.

It starts an embedded Redis Stack of its own (unless ``--use-running``), then a
producer, the router, detectors and aggregators as separate processes, as in
production, and waits until every stage has committed all of its inputs. With
``--direct`` the producer writes each click into its partition itself (the
producer API) and no router runs: the difference is what the router's hop costs. Reported: end-to-end clicks/s (first
XADD to last count), latency from XADD to verdict (entry id times), CPU per
click of every process including Redis, and Redis memory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import psutil
import redis

from agents.pipeline import AGGREGATOR, DETECTOR, PIPELINE, ROUTER
from pipeline.client.cluster import ClusterClient, every_master
from pipeline.client.connection import open_fast_client
from pipeline.client.functions import library_source, require_functions
from pipeline.client.resp import RespClient
from pipeline.core.keys import Keys
from pipeline.core.replies import text_pairs
from pipeline.core.settings import Settings
from pipeline.core.stream_ids import parse_id
from pipeline.dev.bench_report import bench_result, print_result
from pipeline.dev.ports import free_port
from pipeline.dev.redis_probe import aof_rewrites, clear_namespace, persistence_of, redis_cpu_s, redis_memory_bytes
from pipeline.ops.partition_reads import pipeline_drained, stats_totals
from pipeline.runtime.leases import fair_share
from pipeline.runtime.stage import Stage


@dataclass
class StageProcess:
    name: str
    process: psutil.Popen


# What `fraud bench --use-running` appends to FRAUD_NAMESPACE: someone's server, where the bench
# runs in a namespace of its own, never the pipeline's, and each run clears it first (``measure``).
BENCH_NAMESPACE_SUFFIX = "-bench"


@contextmanager
def bench_server(settings: Settings, use_running: bool, aof: bool = True,
                 own_namespace: bool = False) -> Iterator[Settings]:
    """A fresh embedded server for one run; ``aof=False`` measures the pipeline without persistence.
    With `use_running`, the Redis of `settings`, in a namespace of the run's own if `own_namespace`."""
    if use_running:
        yield replace(settings, namespace=settings.namespace + BENCH_NAMESPACE_SUFFIX) if own_namespace else settings
        return
    from pipeline.dev.server import EmbeddedRedis

    with tempfile.TemporaryDirectory(prefix="fraud-bench-") as home:
        server = EmbeddedRedis(Path(home), free_port(), appendfsync=settings.appendfsync,
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
                    FRAUD_CONSUMER=consumer, FRAUD_PARTITIONS=str(settings.partitions))
    full_env.update(env or {})  # the caller's own, over these
    return psutil.Popen([sys.executable, "-m", "pipeline.cli", *argv], env=full_env, stdout=stdout)


def stop_processes(processes: Sequence[psutil.Popen], timeout: float = 30) -> None:
    """SIGTERM each process still running (each finishes its batch and leaves), then wait for all."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        process.wait(timeout)


# How long the agents may take to take their inputs and even out their partitions before a run.
SETTLE_TIMEOUT_S = 60.0


def _spawn(name: str, settings: Settings, *argv: str, stdout: int | None = None) -> StageProcess:
    return StageProcess(name, spawn_cli(settings, f"bench-{name}", *argv, stdout=stdout))


def active_stages(direct: bool) -> list[Stage]:
    """The stages a run uses: a direct producer writes into the partitions, and needs no router."""
    return [stage for stage in PIPELINE if not (direct and stage is ROUTER)]


async def wait_inputs_taken(client: RespClient | ClusterClient, keys: Keys, settings: Settings,
                            stages: list[Stage], members: dict[str, int] | None = None) -> None:
    """Until every input of every stage has its group (made by the member that took it) and, with
    `members` (stage name -> how many run), each stage's partitions are spread over that many owners
    evenly: members starting together first take what they can, then even out at their heartbeats,
    and a click arriving meanwhile would wait for a handover, which the clock must not count."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    for stage in stages:
        for unit in stage.units(settings):
            while not await group_exists(client, stage.input_stream(keys, unit), stage.name):
                await _sleep_until(deadline, f"the {stage.name} group on partition {unit}")
        while members and not await _spread_evenly(client, keys, settings, stage, members[stage.name]):
            await _sleep_until(deadline, f"the {stage.name}'s partitions spread over its {members[stage.name]} members")


async def _sleep_until(deadline: float, waited_for: str) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError(f"waited {SETTLE_TIMEOUT_S:.0f} s for {waited_for}")
    await asyncio.sleep(0.05)


async def _spread_evenly(client: RespClient | ClusterClient, keys: Keys, settings: Settings, stage: Stage,
                         members: int) -> bool:
    """Every partition's lease live, and each of `members` owners holding exactly its fair share:
    the state the sticky rebalance ends in (nobody above or below its share moves a partition again),
    so that no layout passing on its way there counts."""
    units = stage.units(settings)
    now_ms = int((await client.execute("TIME"))[0]) * 1000
    leases = await client.pipeline([("HMGET", stage.lease_key(keys, unit), "owner", "until") for unit in units])
    held = Counter(owner.decode() for owner, until in leases if owner and int(until or 0) > now_ms)
    owners = sorted(held)
    return (sum(held.values()) == len(units) and len(owners) == min(members, len(units))
            and all(held[owner] == fair_share(len(units), owners, owner) for owner in owners))


async def _wait_until_counted(client: RespClient, keys: Keys, settings: Settings, stages: list[Stage],
                              producer: StageProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if producer.process.poll() is not None and await pipeline_drained(client, keys, settings.partitions, stages):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the pipeline did not finish in time")


async def _latencies_ms(client: RespClient, streams: list[str]) -> list[int]:
    latencies: list[int] = []
    for stream in streams:
        start = "-"
        while True:
            entries = await client.execute("XRANGE", stream, start, "+", "COUNT", 10_000)
            if not entries:
                break
            for entry_id, flat in entries:
                raw_id = flat[flat.index(b"raw_id") + 1]
                latencies.append(parse_id(entry_id)[0] - parse_id(raw_id)[0])
            start = "(" + entries[-1][0].decode()
    return latencies


async def _first_arrival_s(client: RespClient, streams: list[str]) -> float | None:
    """The arrival time of the earliest click (its entry id's time), over the streams it entered by."""
    firsts = [reply[0][0] for reply in await client.pipeline([("XRANGE", s, "-", "+", "COUNT", 1) for s in streams])
              if reply]
    return min(parse_id(entry_id)[0] for entry_id in firsts) / 1000 if firsts else None


async def _bench(args: argparse.Namespace, settings: Settings) -> int:
    print_result(args, await measure(args, settings))
    return 0


async def measure(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """One run on the Redis (a server, or a cluster through any node) of ``settings``: its report."""
    client = await open_fast_client(settings)
    try:
        return await _measure(client, args, settings)
    finally:
        await client.close()


async def _measure(client: RespClient | ClusterClient, args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    keys = Keys(settings.namespace)
    direct = getattr(args, "direct", False)
    # Agents wait for `fraud setup` as for a restart; a run on someone's server without it says so at once.
    await require_functions(client, wait=False)
    await clear_namespace(client, settings.namespace)
    active = active_stages(direct)
    counts = {ROUTER.name: args.routers, DETECTOR.name: args.detectors, AGGREGATOR.name: args.aggregators}
    stages: list[StageProcess] = []
    cpu: dict[str, float] = {}
    # Whatever fails from here on, the processes spawned are stopped.
    try:
        stages += [_spawn(f"{stage.name}-{i}", settings, "agent", stage.name)
                   for stage in active for i in range(counts[stage.name])]
        # Every input of every stage is taken (its group made by its owner) before the clock starts.
        await wait_inputs_taken(client, keys, settings, active, counts)
        redis_cpu = await redis_cpu_s(client)
        rewrites = await aof_rewrites(client)
        # Start-up (imports, connecting) is not per-click work: count only what comes after it.
        start_cpu = {stage.name: _cpu_s(stage) for stage in stages}
        started = time.time()
        sends = ["--sends", str(args.sends)] if getattr(args, "sends", None) else []
        producer = _spawn("producer", settings, "agent", "generator", "--rate", str(args.rate), *sends,
                          "--pregenerate", "--total", str(args.clicks), "--seed", "7",
                          *(["--direct"] if direct else []), stdout=subprocess.PIPE)
        stages.append(producer)
        await _wait_until_counted(client, keys, settings, active, producer, args.timeout)
        finished = time.time()
        for stage in stages:
            if stage.process.poll() is None:
                cpu[stage.name] = _cpu_s(stage) - start_cpu.get(stage.name, 0.0)
        redis_cpu = {node: used - redis_cpu.get(node, 0.0) for node, used in (await redis_cpu_s(client)).items()}
        rewrites = await aof_rewrites(client) - rewrites
        assert producer.process.stdout is not None
        cpu["producer"] = orjson.loads(producer.process.stdout.read())["send_cpu_s"]
    finally:
        stop_processes([stage.process for stage in stages])
    parts = keys.partitions(settings.partitions)
    first = await _first_arrival_s(client, [p.input for p in parts] if direct else [keys.raw])
    if first is not None:
        started = first
    latencies = await _latencies_ms(client, [p.verdicts for p in parts])
    stats = await stats_totals(client, keys, settings.partitions)
    memory = await redis_memory_bytes(client)
    holdings = shard_holdings(client, keys, settings.partitions)
    persistence = await persistence_of(client) + (f", {rewrites} AOF rewrite(s) during the run" if rewrites else "")
    return bench_result(args, started, finished, latencies, cpu, redis_cpu, stats, memory, holdings, persistence,
                   _setup(args, settings, direct))


def shard_holdings(client: RespClient | ClusterClient, keys: Keys, partitions: int) -> dict[str, str]:
    """What each master of a cluster serves, by ``host:port``: its partitions, and ``clicks:raw``
    if it serves the ingest stream (the one key no partitioning spreads); empty on one server."""
    if not isinstance(client, ClusterClient):
        return {}
    def address(key: str) -> str:
        host, port = client.node_of(key)
        return f"{host}:{port}"

    served: dict[str, list[int]] = {f"{node.host}:{node.port}": [] for node in every_master(client)}
    for part in keys.partitions(partitions):
        served.setdefault(address(part.input), []).append(part.number)
    raw_node = address(keys.raw)
    return {node: f"{len(held)} partitions ({','.join(map(str, held))})"
            + (f" + {keys.raw}" if node == raw_node else "")
            for node, held in served.items()}


def _setup(args: argparse.Namespace, settings: Settings, direct: bool) -> dict[str, Any]:
    """How the run was set up: the partitions, and how the clicks entered them."""
    return {"partitions": settings.partitions, "direct": direct, "routers": 0 if direct else args.routers}


def _cpu_s(stage: StageProcess) -> float:
    times = stage.process.cpu_times()
    return float(times.user + times.system)


async def group_exists(client: RespClient, stream: str, group: str) -> bool:
    if not await client.execute("EXISTS", stream):
        return False
    return any(text_pairs(g)["name"] == group
               for g in await client.execute("XINFO", "GROUPS", stream))
