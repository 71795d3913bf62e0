"""``fraud bench --cluster N --replicas 1 --failover-drill``: what a master's crash loses, measured.

Replication is asynchronous, so what a failover loses depends on the replication lag at the
instant of the crash: a measurement, never a pass/fail. Each run, on a fresh cluster of its own
(every replica in sync first): a router, two detectors and an aggregator run; the first half of
the clicks is sent and drained; the second half is sent by a producer that sends a batch again
until it is acknowledged (at least once), and once a quarter of it is acknowledged a master is
SIGKILLed, writes flowing (nothing paused): the one of ``clicks:raw`` or one holding only
partitions. Its replica is promoted by Redis Cluster itself; the run then waits for the pipeline to
drain and counts, over every click sent:
- acknowledged clicks no longer on ``clicks:raw`` (the producer was told they were stored);
- clicks on ``clicks:raw`` without an outcome, and with more than one (a verdict or a dead letter;
  a click is its de-duplication key: a second entry of it is counted as a duplicate, no entry);
- outcomes whose ``clicks:raw`` entry is gone;
- the victim's replication offset ahead of its replica's, read just before the kill (the lag).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from typing import Any

from agents.pipeline import PIPELINE
from pipeline.client.cluster import ClusterClient
from pipeline.client.connection import open_fast_client
from pipeline.client.resp import RespError
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.core.stream_ids import parse_id
from pipeline.dev.bench import spawn_cli, stop_processes, wait_inputs_taken
from pipeline.dev.bench_cluster import local_bench_cluster
from pipeline.dev.bench_compare import progress
from pipeline.dev.breakdown import seeded_clicks
from pipeline.dev.cluster import replication_offset, role
from pipeline.ops.partition_reads import pipeline_drained

BATCH = 50
RETRY_S = 0.1
VICTIMS = ("raw", "partitions")


class AtLeastOnceProducer:
    """XADDs to ``clicks:raw`` in batches; what is not acknowledged is sent again until it is."""

    def __init__(self, client: ClusterClient, stream: str) -> None:
        self.client, self.stream = client, stream
        self.acked: list[bytes] = []
        self.resent = 0

    async def send(self, clicks: list[list[str]]) -> None:
        for first in range(0, len(clicks), BATCH):
            pending = clicks[first:first + BATCH]
            while pending:
                try:
                    replies = await self.client.pipeline([("XADD", self.stream, "*", *click) for click in pending])
                except (RespError, ConnectionError, OSError):
                    replies = [None] * len(pending)  # nothing known: all of it again (a repeat, maybe)
                self.acked += [reply for reply in replies if isinstance(reply, bytes)]
                pending = [click for click, reply in zip(pending, replies, strict=True) if not isinstance(reply, bytes)]
                if pending:
                    self.resent += 1
                    await asyncio.sleep(RETRY_S)


async def _read_all(client: ClusterClient, stream: str) -> list[tuple[bytes, list[bytes]]]:
    entries: list[tuple[bytes, list[bytes]]] = []
    start = "-"
    while True:
        page = await client.execute("XRANGE", stream, start, "+", "COUNT", 10_000)
        if not page:
            return entries
        entries += page
        start = "(" + page[-1][0].decode()


async def _wait(condition: Any, timeout: float) -> bool:
    """Whether ``condition()`` came true in time; a cluster still settling (``CLUSTERDOWN`` while
    the failed master's slots have no owner, a node gone) is not an answer yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await condition():
                return True
        except (RespError, ConnectionError, OSError):
            pass
        await asyncio.sleep(0.05)
    return False


async def drill_once(settings: Settings, shards: int, clicks: int, victim_kind: str,
                     timeout: float) -> dict[str, Any]:
    with local_bench_cluster(settings, shards, 1) as (cluster, run_settings):
        keys = Keys(run_settings.namespace)
        agents = [spawn_cli(run_settings, f"drill-{stage.name}-{i}", "agent", stage.name,
                            env={"FRAUD_MAX_ATTEMPTS": "10", "FRAUD_LOG_LEVEL": "error"})
                  for stage, count in zip(PIPELINE, (1, 2, 1), strict=True) for i in range(count)]
        client = await open_fast_client(run_settings)
        assert isinstance(client, ClusterClient)
        try:
            await wait_inputs_taken(client, keys, run_settings, list(PIPELINE))
            trace = seeded_clicks(clicks)
            half = clicks // 2
            producer = AtLeastOnceProducer(client, keys.raw)
            await producer.send(trace[:half])
            if not await _wait(lambda: pipeline_drained(client, keys, run_settings.partitions), timeout):
                raise TimeoutError("the first half was not drained in time")
            raw_port = client.node_of(keys.raw)[1]
            masters = cluster.servers[:cluster.shards]
            victim = next(s for s in masters if (s.port == raw_port) == (victim_kind == "raw"))
            promoted = cluster.replica_of(victim)
            sending = asyncio.create_task(producer.send(trace[half:]))
            # Mid-flow by construction: a quarter of the second half acknowledged, the rest coming.
            while len(producer.acked) < half + (clicks - half) // 4 and not sending.done():
                await asyncio.sleep(0.005)
            # The replica's offset first: the master's read after it is as far or farther.
            lag = -replication_offset(promoted) + replication_offset(victim)
            killed_at, killed_at_ms = time.monotonic(), int(time.time() * 1000)
            victim.kill()
            while role(promoted) != "master":
                if time.monotonic() - killed_at > timeout:
                    raise TimeoutError(f"replica {promoted.port} was not promoted in time")
                await asyncio.sleep(0.05)
            failover_s = time.monotonic() - killed_at
            await sending
            drained = await _wait(lambda: pipeline_drained(client, keys, run_settings.partitions), timeout)
            raw = dict(await _read_all(client, keys.raw))
            outcomes: Counter[bytes] = Counter()
            for part in keys.partitions(run_settings.partitions):
                for stream in (part.verdicts, part.dead):
                    for _, fields in await _read_all(client, stream):
                        outcomes[fields[fields.index(b"raw_id") + 1]] += 1
        finally:
            stop_processes(agents)
            await client.close()
    lost_ms = [parse_id(entry_id)[0] for entry_id in producer.acked if entry_id not in raw]
    per_click = outcomes_per_click(raw, outcomes)
    return {
        "victim": f"{victim_kind} master",
        "replication_lag_bytes_at_kill": lag,
        "failover_s": round(failover_s, 2),
        "acknowledged": len(producer.acked),
        "batches_sent_again": producer.resent,
        "acknowledged_lost": len(lost_ms),
        # How far before the kill the earliest lost acknowledged click was stored (0: none lost).
        "lost_ms_before_kill": max(0, killed_at_ms - min(lost_ms)) if lost_ms else 0,
        "raw_entries": len(raw),
        "clicks_on_raw": len(per_click),
        "clicks_without_outcome": sum(1 for n in per_click.values() if n == 0),
        "clicks_with_several_outcomes": sum(1 for n in per_click.values() if n > 1),
        "outcomes_of_vanished_raw": sum(n for entry_id, n in outcomes.items() if entry_id not in raw),
        "drained": drained,
    }


def click_key(entry_id: bytes, fields: list[bytes]) -> tuple[bytes, ...]:
    """What makes entries one click: the detector's de-duplication key (device, transaction), so
    that a click sent twice (the producer's resend, the trace's own retries) is one click whose
    second entry is counted as a duplicate and has no entry of its own; a malformed entry is itself."""
    named = dict(zip(fields[::2], fields[1::2], strict=False))
    device, transaction = named.get(b"device_id"), named.get(b"transaction_id")
    return (device, transaction) if device is not None and transaction is not None else (entry_id,)


def outcomes_per_click(raw: dict[bytes, list[bytes]], outcomes: Counter[bytes]) -> Counter[tuple[bytes, ...]]:
    """Outcomes (verdicts and dead letters) per click on ``clicks:raw``."""
    per_click: Counter[tuple[bytes, ...]] = Counter()
    for entry_id, fields in raw.items():
        per_click[click_key(entry_id, fields)] += outcomes[entry_id]
    return per_click


async def failover_drill(args: argparse.Namespace, settings: Settings) -> list[dict[str, Any]]:
    """``--repeat`` runs for each victim, taking turns (raw master, partitions master, ...)."""
    runs = []
    for _ in range(args.repeat):
        for victim in VICTIMS:
            progress(f"drill {len(runs) + 1}/{2 * args.repeat}: the {victim} master killed")
            runs.append(await drill_once(settings, args.cluster, args.clicks, victim, args.timeout))
    return runs


def print_drill(runs: list[dict[str, Any]], clicks: int) -> None:
    print(f"master SIGKILLed mid-flow, writes not paused; {clicks} clicks a run (half before, half around the kill)")
    header = ("victim", "lag B", "failover s", "acked lost", "lost ms", "clicks without outcome", "with several",
              "outcomes of vanished raw", "batches sent again", "drained")
    rows = [(r["victim"], str(r["replication_lag_bytes_at_kill"]), f"{r['failover_s']:.1f}",
             f"{r['acknowledged_lost']}/{r['acknowledged']}", str(r["lost_ms_before_kill"]),
             f"{r['clicks_without_outcome']}/{r['clicks_on_raw']}", str(r["clicks_with_several_outcomes"]),
             str(r["outcomes_of_vanished_raw"]), str(r["batches_sent_again"]), "yes" if r["drained"] else "no")
            for r in runs]
    widths = [max(len(line[i]) for line in (header, *rows)) for i in range(len(header))]
    for line in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
