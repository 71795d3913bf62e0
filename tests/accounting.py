"""Exactly-once bookkeeping: every raw entry has exactly one outcome, and every counter agrees.

Works on raw bytes (entries may hold anything, including non-UTF-8), straight from the server.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import redis

from pipeline.core.keys import VERDICTS, Keys
from pipeline.core.settings import Settings
from tests.helpers import series_totals
from tests.outputs import open_client, read_partitions, read_stream, stage_drained, stats_totals

Flat = dict[bytes, bytes]


def as_dict(flat: list[bytes]) -> Flat:
    return dict(zip(flat[::2], flat[1::2], strict=False))


@dataclass
class Outcomes:
    raw: list[tuple[bytes, list[bytes]]]
    verdicts: dict[bytes, Flat] = field(default_factory=dict)  # raw id -> verdict entry fields
    verdict_order: list[bytes] = field(default_factory=list)  # raw ids in verdict-stream order
    dead: dict[bytes, Flat] = field(default_factory=dict)  # raw id -> detector dead letter
    duplicates: set[bytes] = field(default_factory=set)

    def verdict_counts(self) -> dict[str, int]:
        counts = Counter(v[b"verdict"].decode() for v in self.verdicts.values())
        return {v: counts.get(v, 0) for v in VERDICTS}


def dedup_key(flat: list[bytes], entry_id: bytes) -> tuple[bytes, bytes] | None:
    fields = as_dict(flat)
    device = fields.get(b"device_id")
    if device is None:
        return None
    tx = fields.get(b"transaction_id")
    return device, b"t:" + tx if tx is not None else b"e:" + entry_id


def check_exactly_once(settings: Settings, *, aggregated: bool = True, retries_may_expire: bool = False) -> Outcomes:
    """Assert that every raw entry has exactly one outcome and that the counters match; return them.

    ``retries_may_expire``: a click name (device_id, transaction_id) may have more than one verdict,
    for traces where a retry comes after the horizon (the caller checks which, with a model).
    """
    with open_client(settings.redis_url) as client:
        out = _check(client, settings, aggregated, retries_may_expire)
    if aggregated:
        assert series_totals(settings) == out.verdict_counts(), "series sums differ from the verdict counts"
    return out


def _check(client: redis.Redis, settings: Settings, aggregated: bool, retries_may_expire: bool) -> Outcomes:
    raw = read_stream(client, Keys(settings.namespace).raw)
    out = Outcomes(raw)
    for _, flat in read_partitions(client, settings, "verdicts"):
        fields = as_dict(flat)
        raw_id = fields[b"raw_id"]
        assert raw_id not in out.verdicts, f"two verdicts for raw entry {raw_id!r}"
        out.verdicts[raw_id] = fields
        out.verdict_order.append(raw_id)
    for _, flat in read_partitions(client, settings, "dead"):
        # The header comes first; the original fields after it may repeat its names.
        fields = as_dict(flat[6:]) | as_dict(flat[:6])
        assert fields[b"reason"], f"dead letter without a reason: {fields!r}"
        if fields[b"stage"] not in (b"router", b"detector"):
            continue
        raw_id = fields[b"raw_id"]
        assert raw_id not in out.dead, f"two dead letters for raw entry {raw_id!r}"
        out.dead[raw_id] = fields
    both = set(out.verdicts) & set(out.dead)
    assert not both, f"entries with a verdict and a dead letter: {sorted(both)[:5]}"
    raw_ids = {entry_id for entry_id, _ in raw}
    assert set(out.verdicts) <= raw_ids, "verdicts for entries that are not on the raw stream"
    assert set(out.dead) <= raw_ids, "dead letters for entries that are not on the raw stream"

    # Each (device_id, transaction_id) has exactly one verdict; its other entries are duplicates.
    groups: dict[tuple[bytes, bytes], list[bytes]] = defaultdict(list)
    for entry_id, flat in raw:
        if entry_id in out.dead:
            continue
        key = dedup_key(flat, entry_id)
        assert key is not None, f"entry {entry_id!r} has no device_id, yet no dead letter"
        groups[key].append(entry_id)
    for key, ids in groups.items():
        with_verdict = [i for i in ids if i in out.verdicts]
        if retries_may_expire:
            assert with_verdict, f"{key!r}: no verdict among entries {ids[:5]}"
        else:
            assert len(with_verdict) == 1, f"{key!r}: {len(with_verdict)} verdicts among entries {ids[:5]}"
        out.duplicates |= set(ids) - set(with_verdict)

    assert len(out.verdicts) + len(out.dead) + len(out.duplicates) == len(raw)
    assert stage_drained(client, settings, "router"), "router group not drained"
    assert stage_drained(client, settings, "detector"), "detector groups not drained"

    stats = stats_totals(client, settings)
    counts = out.verdict_counts()
    for verdict, n in counts.items():
        assert stats.get(f"detector.{verdict}", 0) == n, f"stats detector.{verdict} != {n}"
    assert stats.get("detector.duplicate", 0) == len(out.duplicates)
    assert stats.get("detector.dead", 0) + stats.get("router.dead", 0) == len(out.dead)
    if aggregated:
        assert stage_drained(client, settings, "aggregator"), "aggregator groups not drained"
        assert stats.get("aggregator.counted", 0) == len(out.verdicts)
        assert stats.get("aggregator.dead", 0) == 0
    return out
