"""What ``fraud bench`` reports of one run: the JSON document and its text form."""

from __future__ import annotations

import argparse
from typing import Any

import orjson

from agents.pipeline import PIPELINE


def _percentile(values: list[int], fraction: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]) if ordered else 0.0


def bench_result(args: argparse.Namespace, started: float, finished: float, latencies: list[int],
                 cpu: dict[str, float], redis_cpu: dict[str, float], stats: dict[str, int], memory: dict[str, int],
                 holdings: dict[str, str], persistence: str, setup: dict[str, Any]) -> dict[str, Any]:
    clicks = args.clicks
    elapsed = finished - started
    return {
        "clicks": clicks,
        "seconds": round(elapsed, 3),
        "clicks_per_s": round(clicks / elapsed),
        "latency_ms_p50": _percentile(latencies, 0.50),
        "latency_ms_p99": _percentile(latencies, 0.99),
        "cpu_us_per_click": {name: round(s / clicks * 1e6, 1) for name, s in sorted(cpu.items())}
        | {"redis": round(sum(redis_cpu.values()) / clicks * 1e6, 1)},
        # Per master: its Redis CPU per click and its share of all the masters' (a cluster's spread),
        # its memory and what it serves.
        "redis_shards": _shares(redis_cpu, clicks, memory, holdings),
        "verdicts": {k.split(".", 1)[1]: v for k, v in stats.items() if k.startswith("detector.")},
        "counted": stats.get("aggregator.counted", 0),
        "redis_memory_bytes": sum(memory.values()),
        "persistence": persistence,
        **setup,
        # Each stage's finished entries (an outcome each), summed over the partitions.
        "finished": {stage.name: stage.finished_count(stats) for stage in PIPELINE},
    }


def print_result(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if args.json:
        print(orjson.dumps(result).decode())
        return
    clicks = result["clicks"]
    entry = "written into the partitions (direct)" if result["direct"] else f"{result['routers']} router(s)"
    print(f"{clicks} clicks end to end in {result['seconds']:.2f} s: {result['clicks_per_s']:,} clicks/s"
          f" ({result['partitions']} partitions, {entry}, {args.detectors} detector(s),"
          f" {args.aggregators} aggregator(s), Redis {result['persistence']})")
    print(f"latency XADD -> verdict: p50 {result['latency_ms_p50']:.0f} ms, "
          f"p99 {result['latency_ms_p99']:.0f} ms")
    print("CPU per click (us): " + ", ".join(f"{k} {v}" for k, v in result["cpu_us_per_click"].items()))
    if len(result["redis_shards"]) > 1:
        print_shards(result["redis_shards"])
    print("verdicts: " + ", ".join(f"{k} {v}" for k, v in result["verdicts"].items())
          + f"; counted {result['counted']}")
    print(f"Redis memory: {result['redis_memory_bytes'] / 2**20:.1f} MiB")


def print_shards(shards: dict[str, dict[str, Any]]) -> None:
    print("Redis per shard:")
    for node, row in shards.items():
        print(f"  {node}  {row['cpu_us_per_click']:>5} us/click  {row['share_pct']:>5} %  "
              f"{row['memory_bytes'] / 2**20:6.1f} MiB  {row.get('holds', '')}".rstrip())


def _shares(redis_cpu: dict[str, float], clicks: int, memory: dict[str, int],
            holdings: dict[str, str]) -> dict[str, dict[str, Any]]:
    total = sum(redis_cpu.values()) or 1.0
    return {node: {"cpu_us_per_click": round(used / clicks * 1e6, 1), "share_pct": round(100 * used / total, 1),
                   "memory_bytes": memory.get(node, 0)} | ({"holds": holdings[node]} if node in holdings else {})
            for node, used in sorted(redis_cpu.items())}
