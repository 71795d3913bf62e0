"""The dead letter's copy of a rejected entry: bounded, whatever the entry holds.

A dead letter is ``reason, stage, raw_id`` followed by the original
entry's fields. An entry may hold any number of fields of any size (a stream
value can be 512 MB), so the copy keeps at most ``max_fields`` fields and cuts
every name and value to ``max_bytes``. What was cut is recorded at the end of
the reason, after the stable code and its message, as::

    ...; cut: fields 4100>32, #3 value 2000000>1024, #7 name 3000>1024

(``#i``: the field's position in the original entry, from 1; then the original
length in bytes, and the limit). An entry within the limits is copied exactly.
Building the copy here means the server-side step never unpacks more than a
bounded number of values, so a dead letter can always be written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from schemas.click import FieldLimits

Value = TypeVar("Value", bytes, str)

CUT_MARK = "; cut: "

# Every reason starts with one of these stable codes and a colon; README lists the same.
REASON_CODES = ("missing_field", "invalid_field", "oversized_field", "too_many_fields", "duplicate_field",
                "reserved_field", "undecodable", "invalid_id", "ts_too_old", "ts_in_future", "invalid_position",
                "wrong_partition", "deleted", "error", "max_attempts")


def bounded_copy(reason: str, flat: Sequence[Value] | None,
                 limits: FieldLimits) -> tuple[str, list[Value]]:
    """The dead letter's reason and field copy for an entry: ``flat`` bounded as the module says."""
    flat = flat or ()
    cuts: list[str] = []
    count = len(flat) // 2
    if count > limits.max_fields:
        cuts.append(f"fields {count}>{limits.max_fields}")
    kept = list(flat[:2 * limits.max_fields])
    if len(kept) < len(flat) or max(map(len, kept), default=0) > limits.max_bytes:
        for at, item in enumerate(kept):
            if len(item) > limits.max_bytes:
                cuts.append(f"#{at // 2 + 1} {'value' if at % 2 else 'name'} {len(item)}>{limits.max_bytes}")
                kept[at] = item[:limits.max_bytes]
    if cuts:
        reason += CUT_MARK + ", ".join(cuts)
    return reason, kept
