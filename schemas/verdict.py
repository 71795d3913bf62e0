"""The verdict: one entry per accepted click on the verdict stream.

Wire form: ``verdict`` (one of VERDICTS) and ``raw_id`` (the click's entry id on
the raw stream) first, then the click's fields: ``device_id``, ``ip`` (in canonical
spelling), ``ts`` (always set), ``transaction_id``, ``lat`` and ``lon`` (when the click
has them), then its other fields in its order: all of them, or with FRAUD_VERDICT_FIELDS
set to a list, ``device_id``, ``ip``, ``ts`` and the listed ones the click has. ``Verdict`` is
that entry as a record, for readers of the stream (the tests read every verdict
through it); the aggregator's hot path reads only what it counts
(``verdict_index_and_time``). Dead letters: schemas/dead_letter.py.
"""

from __future__ import annotations

from typing import Any

import faust

from pipeline.core.keys import VERDICTS

VERDICT_INDEX: dict[bytes, int] = {v.encode(): i for i, v in enumerate(VERDICTS)}


class Verdict(faust.Record, serializer="json", include_metadata=False):
    device_id: str
    ip: str
    ts: int
    verdict: str
    raw_id: str
    transaction_id: str | None = None
    extra: dict[str, str] | None = None

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> Verdict:
        known = {"device_id", "ip", "ts", "verdict", "raw_id", "transaction_id"}
        extra = {k: v for k, v in fields.items() if k not in known}
        return cls(
            device_id=fields["device_id"], ip=fields["ip"], ts=int(fields["ts"]),
            verdict=fields["verdict"], raw_id=fields["raw_id"],
            transaction_id=fields.get("transaction_id"), extra=extra or None,
        )


class InvalidVerdict(ValueError):
    pass


def verdict_index_and_time(flat: list[Any] | None, max_future_ms: int) -> tuple[int, int]:
    """What the aggregator needs of a verdict entry: which verdict, and its event time.

    The detector accepts a ts only up to its click's arrival (the ms part of
    ``raw_id``) + FRAUD_MAX_FUTURE_MS: an entry past that was not written by it,
    and one far-future sample would make the series' retention drop its past.
    """
    if not flat:
        raise InvalidVerdict(
            "deleted: entry was trimmed" if flat is None else "missing_field: entry has no fields")
    names = flat[::2]
    try:
        # The detector writes `verdict` first; look further only for entries written otherwise.
        verdict_raw = flat[1] if flat[0] == b"verdict" else flat[2 * names.index(b"verdict") + 1]
        ts_raw = flat[2 * names.index(b"ts") + 1]
        raw_id = flat[3] if flat[2] == b"raw_id" else flat[2 * names.index(b"raw_id") + 1]
    except (ValueError, IndexError):
        raise InvalidVerdict("missing_field: verdict, raw_id and ts are required") from None
    arrival = raw_id.partition(b"-")[0]
    if not arrival.isdigit() or len(arrival) > 20:
        raise InvalidVerdict(f"invalid_field: raw_id {raw_id[:32]!r}")
    latest_ms = int(arrival) + max_future_ms
    verdict = VERDICT_INDEX.get(verdict_raw)
    if verdict is None:
        raise InvalidVerdict(f"invalid_field: unknown verdict {verdict_raw[:32]!r}")
    if not ts_raw.isdigit() or len(ts_raw) > len(str(latest_ms)) or int(ts_raw) > latest_ms:
        raise InvalidVerdict(f"invalid_field: ts {ts_raw[:32]!r} is not epoch ms up to {latest_ms}")
    return verdict, int(ts_raw)
