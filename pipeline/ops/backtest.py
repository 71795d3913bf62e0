"""``fraud backtest``: run a labelled click log through the current rules in a key space of its
own, and count how the verdicts agree with the labels.

Each row is XADDed with the explicit id ``<arrival>-*``, its arrival being its own event time, so
the detector judges the log as it happened, whatever the wall clock says now. Rows are sent in
file order; a row older than the newest event time sent before it arrives at that newest time
(as it would have reached a collector late), and one more than ``FRAUD_DEDUP_HORIZON_MS`` late is
dead-lettered ``ts_too_old``, as it would be live. A row without a time arrives with the row
before it. Each click carries what its label says in the field ``backtest_fraud`` (1 or 0), so
its verdict or dead letter tells, and counting needs no table of the clicks.

The key space is ``<namespace>:replay:<name>`` (as ``fraud replay --from-stream`` uses), seeded
with a snapshot of the live blacklist; live keys are only read. It is dropped at the end unless
asked to be kept.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from pathlib import Path
from typing import TextIO

from agents.pipeline import PIPELINE
from pipeline.client.connection import open_fast_client
from pipeline.client.resp import RespClient
from pipeline.core.errors import FraudError
from pipeline.core.keys import Keys
from pipeline.core.replies import pairs
from pipeline.core.settings import Settings
from pipeline.ops.backtest_report import DEAD, NONE, Outcomes
from pipeline.ops.mapping import Mapping
from pipeline.ops.replay_file import Sender, dead_letter_bad_line, trace_items
from pipeline.ops.reprocess import CONSUMER, JUDGING_STAGES, PAGE, copy_blacklists, drop, replay_settings
from pipeline.ops.trace_files import BadLine
from pipeline.runtime.agent import run_burst

TRUTH = "backtest_fraud"


@dataclasses.dataclass
class BacktestRun:
    setting: str
    outcomes: Outcomes
    sent: int
    bad_lines: int
    send_seconds: float
    judge_seconds: float


async def send_at_event_time(client: RespClient, settings: Settings, path: Path, fmt: str, mapping: Mapping,
                             progress_out: TextIO | None = None) -> tuple[Counter[bool], int]:
    """XADD every row as arriving at its event time; returns the clicks sent per label, and the bad lines."""
    keys = Keys(settings.namespace)
    sender = Sender(client, keys, settings.batch_size)
    sent: Counter[bool] = Counter()
    bad_lines = 0
    arrival = 0
    with trace_items(path, fmt, mapping, progress_out) as (items, progress):
        for item in items:
            if isinstance(item, BadLine):
                bad_lines += 1
                await dead_letter_bad_line(sender, keys, settings, item, progress, path)
                continue
            ts = item.event_time()
            arrival = max(arrival, ts or 0, 1)
            fraud = bool(item.fraud)
            await sender.add(("XADD", keys.raw, f"{arrival}-*", TRUTH, "1" if fraud else "0", *item.fields))
            sent[fraud] += 1
    await sender.flush()
    return sent, bad_lines


async def count_outcomes(client: RespClient, keys: Keys, partitions: int, sent: Counter[bool]) -> Outcomes:
    """(outcome, fraud) -> clicks, read from the key space's verdicts and dead letters."""
    counts: Counter[tuple[str, bool]] = Counter()
    truth = TRUTH.encode()
    streams = [(stream, dead) for part in keys.partitions(partitions)
               for stream, dead in ((part.verdicts, False), (part.dead, True))]
    for stream, dead in streams:
        low = "-"
        while True:
            page = await client.execute("XRANGE", stream, low, "+", "COUNT", PAGE)
            for _, flat in page:
                named = pairs(flat)
                if truth not in named or (dead and named.get(b"stage") not in JUDGING_STAGES):
                    continue
                outcome = DEAD if dead else named[b"verdict"].decode()
                counts[outcome, named[truth] == b"1"] += 1
            if len(page) < PAGE:
                break
            low = "(" + page[-1][0].decode()
    for fraud in (True, False):
        seen = sum(n for (_, f), n in counts.items() if f == fraud)
        counts[NONE, fraud] = sent[fraud] - seen
    return Outcomes(counts)


def copying_truth(settings: Settings) -> Settings:
    """The settings with the label's field copied into every verdict entry: the count reads it there."""
    if settings.verdict_extra_fields is None or TRUTH in settings.verdict_extra_fields:
        return settings
    return dataclasses.replace(settings, verdict_fields=f"{settings.verdict_fields},{TRUTH}")


def with_setting(settings: Settings, name: str, value: int) -> Settings:
    """The settings with one rule setting changed; the horizon grows to hold a longer window."""
    field = {"threshold": "click_spam_threshold", "window_ms": "click_spam_window_ms"}[name]
    changed = dataclasses.replace(settings, **{field: value})
    if changed.dedup_horizon_ms < changed.click_spam_window_ms:
        changed = dataclasses.replace(changed, dedup_horizon_ms=changed.click_spam_window_ms)
    changed.validate()
    return changed


async def backtest(settings: Settings, name: str, path: Path, fmt: str, mapping: Mapping, setting: str = "",
                   keep: bool = False, progress_out: TextIO | None = None) -> BacktestRun:
    """One run: send, judge with every stage, count; then drop the key space unless ``keep``."""
    if mapping.label is None:
        raise FraudError("a backtest needs the label column (--label) and what counts as fraud")
    if mapping.ts is None:
        raise FraudError("a backtest needs the event-time column (--ts)")
    aside = copying_truth(replay_settings(settings, name))
    replay = Keys(aside.namespace)
    client = await open_fast_client(settings)
    try:
        if await client.execute("EXISTS", replay.raw):
            raise FraudError(f"key space {replay.namespace} exists: drop it first "
                             f"(fraud replay --drop --name {name})")
        await copy_blacklists(client, Keys(settings.namespace), replay, settings.partitions)
        started = time.monotonic()
        sent, bad_lines = await send_at_event_time(client, aside, path, fmt, mapping, progress_out)
        sent_at = time.monotonic()
        for stage in PIPELINE:
            await run_burst(stage, aside, CONSUMER)
        judged_at = time.monotonic()
        outcomes = await count_outcomes(client, replay, settings.partitions, sent)
    finally:
        await client.close()
    if not keep:
        await drop(settings, name)
    return BacktestRun(setting, outcomes, sum(sent.values()), bad_lines, sent_at - started, judged_at - sent_at)
