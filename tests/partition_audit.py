"""Checks of the partitions' records, shared by the partition and fault tests."""

from __future__ import annotations

import ipaddress
import time

import redis

from agents.generator import blacklisted_ips, traffic
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from tests.accounting import Outcomes, check_exactly_once
from tests.outputs import read_stream
from tests.rule_model import RuleModel


def check_commit_logs(client: redis.Redis, settings: Settings, stage: str) -> int:
    """No two owners ever applied batches of one partition at overlapping epochs: in each partition's
    commit log, every batch follows the one before it (its `after` is the previous `last`), epochs
    never go back, and each epoch belongs to one owner. Returns the number of batches checked."""
    checked = 0
    for part in Keys(settings.namespace).partitions(settings.partitions):
        previous: dict[bytes, bytes] | None = None
        owners: dict[int, bytes] = {}
        for _, flat in read_stream(client, part.commits(stage)):
            batch = dict(zip(flat[::2], flat[1::2], strict=True))
            epoch = int(batch[b"epoch"])
            assert owners.setdefault(epoch, batch[b"owner"]) == batch[b"owner"], \
                f"{part.prefix} {stage}: epoch {epoch} applied by {owners[epoch]!r} and {batch[b'owner']!r}"
            if previous is not None:
                assert batch[b"after"] == previous[b"last"], \
                    f"{part.prefix} {stage}: batch after {batch[b'after']!r} follows one ending {previous[b'last']!r}"
                assert epoch >= int(previous[b"epoch"]), f"{part.prefix} {stage}: epoch went back to {epoch}"
            previous = batch
            checked += 1
    return checked


def labelled_trace(seed: int, count: int, step_ms: int = 5) -> list[list[str]]:
    """A seeded trace of the generator's labelled traffic (humans, bot bursts, blacklisted addresses,
    retries, malformed clicks) over simulated event time ending 30 s before now: sent faster than
    real time, each click's ts stays inside the accepted range around its arrival."""
    start = int(time.time() * 1000) - 30_000 - count * step_ms
    ticks = iter(range(start, start + 10 * count * step_ms, step_ms))
    clicks = traffic(seed, lambda: next(ticks))
    return [next(clicks)[0] for _ in range(count)]


def model_outcomes(settings: Settings, raw: list[tuple[bytes, list[bytes]]]) -> dict[bytes, str]:
    """raw id -> the sequential model's outcome (verdict, 'duplicate' or a dead letter's reason code)."""
    model = RuleModel(window_ms=settings.click_spam_window_ms, threshold=settings.click_spam_threshold,
                      horizon_ms=settings.dedup_horizon_ms, max_future_ms=settings.max_future_ms,
                      blacklist=frozenset(ipaddress.ip_address(ip) for ip in blacklisted_ips()))
    return {entry_id: model.outcome(entry_id.decode(), flat) for entry_id, flat in raw}


def pipeline_outcomes(out: Outcomes) -> dict[bytes, str]:
    """raw id -> what the pipeline gave it: its verdict, 'duplicate', or its dead letter's reason code."""
    given = {raw_id: v[b"verdict"].decode() for raw_id, v in out.verdicts.items()}
    given |= {raw_id: d[b"reason"].decode().split(":", 1)[0] for raw_id, d in out.dead.items()}
    given |= dict.fromkeys(out.duplicates, "duplicate")
    return given


def check_against_model(settings: Settings) -> Outcomes:
    """Exactly one outcome per click, counts that add up, and every outcome the model's."""
    out = check_exactly_once(settings)
    expected = model_outcomes(settings, out.raw)
    given = pipeline_outcomes(out)
    wrong = [(i, expected[i], given.get(i)) for i in expected if given.get(i) != expected[i]]
    assert not wrong, f"{len(wrong)} of {len(expected)} outcomes differ from the model, e.g. {wrong[:5]}"
    return out
