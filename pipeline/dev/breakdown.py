"""``fraud bench --breakdown``: where Redis's CPU goes, per stage and per command.

The clicks are written first (seeded demo traffic, through ``clicks:raw`` or straight into the
partitions), then each stage runs alone, in flow order, until it has done them all, in this
process. Around each stage the server's CPU and ``INFO commandstats`` are read, so a stage's
share is its own. A function's time (``fcall``) includes the commands it runs; what remains of it
after them is the Lua call itself and its arguments: the overhead a step pays for being a script.
Run it with and without AOF (``--no-aof``) to see what persistence adds.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from agents.generator import traffic
from agents.pipeline import PIPELINE
from pipeline.client.connection import open_fast_client
from pipeline.client.producer import Partitioner
from pipeline.client.resp import RespClient
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.dev.bench import bench_server
from pipeline.dev.redis_probe import clear_namespace, info_fields, redis_cpu_s
from pipeline.runtime.agent import run_burst

# Commands an agent sends itself (reads, set-up, bookkeeping); every other command ran inside a step.
TOP_LEVEL = frozenset(("fcall", "xread", "xinfo|groups", "xinfo|stream", "xgroup|create", "exists", "hsetnx",
                       "hget", "info", "function|list", "cf.reserve", "ts.create", "ts.createrule", "ts.info",
                       "ts.alter", "xtrim"))
PAGE = 1000


async def command_usec(client: RespClient) -> dict[str, tuple[int, int]]:
    """command -> (calls, microseconds) from INFO commandstats."""
    out: dict[str, tuple[int, int]] = {}
    for name, stats in (await info_fields(client, "commandstats")).items():
        if name.startswith("cmdstat_"):
            fields = dict(item.split("=", 1) for item in stats.split(","))
            out[name[len("cmdstat_"):]] = (int(fields["calls"]), int(fields["usec"]))
    return out


async def server_cpu_s(client: RespClient) -> float:
    """The server's (every master's) Redis CPU seconds so far."""
    return sum((await redis_cpu_s(client)).values())


def seeded_clicks(count: int) -> list[list[str]]:
    """``count`` clicks of the seeded demo traffic (each a flat field list), 1 ms apart, ending a
    minute ago: the same clicks every run."""
    start = int(time.time() * 1000) - 60_000
    ticks = iter(range(start, start + 10 * count))
    generated = traffic(7, lambda: next(ticks))
    return [next(generated)[0] for _ in range(count)]


async def write_clicks(client: RespClient, settings: Settings, clicks: int, direct: bool) -> None:
    keys = Keys(settings.namespace)
    partitioner = Partitioner(keys, settings.partitions)
    generated = seeded_clicks(clicks)
    for first in range(0, clicks, PAGE):
        batch = generated[first:first + PAGE]
        await client.pipeline([("XADD", partitioner.stream(c) if direct else keys.raw, "*", *c) for c in batch])


def _delta(after: dict[str, tuple[int, int]], before: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    out = {}
    for name, (calls, usec) in after.items():
        was = before.get(name, (0, 0))
        if calls - was[0]:
            out[name] = (calls - was[0], usec - was[1])
    return out


def stage_row(name: str, clicks: int, cpu_s: float, commands: dict[str, tuple[int, int]]) -> dict[str, Any]:
    inner = sum(usec for command, (_, usec) in commands.items() if command not in TOP_LEVEL)
    fcall = commands.get("fcall", (0, 0))[1]
    return {"stage": name, "redis_us_per_click": round(cpu_s / clicks * 1e6, 2),
            "fcall_us_per_click": round(fcall / clicks, 2),
            "lua_overhead_us_per_click": round(max(0, fcall - inner) / clicks, 2),
            "commands": {command: {"calls": calls, "us_per_click": round(usec / clicks, 2)}
                         for command, (calls, usec) in sorted(commands.items(), key=lambda kv: -kv[1][1])}}


async def breakdown(settings: Settings, clicks: int, direct: bool) -> list[dict[str, Any]]:
    client = await open_fast_client(settings)
    try:
        # The same seeded clicks as a previous run's would be its duplicates.
        await clear_namespace(client, settings.namespace)
        rows = []
        before_cpu, before = await server_cpu_s(client), await command_usec(client)
        await write_clicks(client, settings, clicks, direct)
        after_cpu, after = await server_cpu_s(client), await command_usec(client)
        rows.append(stage_row("producer", clicks, after_cpu - before_cpu, _delta(after, before)))
        for stage in PIPELINE:
            if direct and not stage.partitioned:
                continue
            before_cpu, before = after_cpu, after
            await run_burst(stage, settings, f"breakdown-{stage.name}")
            after_cpu, after = await server_cpu_s(client), await command_usec(client)
            rows.append(stage_row(stage.name, clicks, after_cpu - before_cpu, _delta(after, before)))
        return rows
    finally:
        await client.close()


def print_breakdown(rows: Iterable[dict[str, Any]], persistence: str, top: int = 6) -> None:
    rows = list(rows)
    total = sum(row["redis_us_per_click"] for row in rows)
    print(f"Redis CPU per click by stage ({persistence}): {total:.1f} us in all")
    for row in rows:
        share = (f", of which {row['fcall_us_per_click']} in functions "
                 f"({row['lua_overhead_us_per_click']} Lua call and arguments)") if row["fcall_us_per_click"] else ""
        print(f"  {row['stage']:<11} {row['redis_us_per_click']:>6.2f} us{share}")
        heaviest = list(row["commands"].items())[:top]
        print("              " + ", ".join(f"{c} {v['us_per_click']}" for c, v in heaviest))


async def breakdown_runs(settings: Settings, clicks: int, direct: bool,
                         use_running: bool) -> dict[str, list[dict[str, Any]]]:
    """The breakdown with AOF and, on a fresh embedded server, without it: persistence -> rows."""
    runs = {}
    for aof in (True,) if use_running else (True, False):
        with bench_server(settings, use_running, aof=aof, own_namespace=True) as bench_settings:
            label = f"AOF appendfsync {settings.appendfsync}" if aof else "without AOF"
            runs[label] = await breakdown(bench_settings, clicks, direct)
    return runs


def print_runs(runs: dict[str, list[dict[str, Any]]]) -> None:
    for persistence, rows in runs.items():
        print_breakdown(rows, persistence)
    if len(runs) == 2:
        with_aof, without = runs.values()
        print("AOF adds per click: " + ", ".join(
            f"{a['stage']} {a['redis_us_per_click'] - b['redis_us_per_click']:.2f} us"
            for a, b in zip(with_aof, without, strict=True)))
