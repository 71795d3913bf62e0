"""The runtime's own server-side steps (in ``agents/fraud.lua``), declared once by name."""

from __future__ import annotations

from pipeline.client.step import Section, Step

# What every partition step is fenced and committed by (see ``open_partition`` and ``commit`` in
# fraud.lua): the partition's lease and commit log and the stage's input stream; the stage's group,
# the member and epoch it acts as, the offset its batch follows and the batch's first and last ids.
FENCE_KEYS: tuple[str, ...] = ("lease", "commits", "input")
FENCE_PARAMS: tuple[str, ...] = ("group", "owner", "epoch", "after", "first", "last", "stage")

REJECT = Step("fraud_reject", keys=(*FENCE_KEYS, "dead", "stats"), params=FENCE_PARAMS,
              sections=(Section("entries", ("id", "reason", "n")),))
# Counts an attempt at a batch before it is applied, when the step that committed the batch before
# did not (see attempts.py): fenced like a step.
ATTEMPT = Step("fraud_attempt", keys=FENCE_KEYS, params=(*FENCE_PARAMS, "limit", "alone"))
TRIM = Step("fraud_trim", keys=("stream",), params=("keep_from",))
LEASE = Step("fraud_lease", keys=("lease",), params=("action", "owner", "epoch", "ttl_ms"))
MEMBER = Step("fraud_member", keys=("members",), params=("action", "name", "ttl_ms"))
ADVANCE = Step("fraud_advance", keys=("stream",), params=("group", "after", "last", "count"))
