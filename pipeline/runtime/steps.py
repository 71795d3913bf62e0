"""The runtime's own server-side steps (in ``agents/fraud.lua``), declared once by name."""

from __future__ import annotations

from pipeline.client.step import Section, Step

REJECT = Step("fraud_reject", keys=("stream", "dead", "stats"), params=("group", "consumer", "stage", "lo", "hi"),
              sections=(Section("entries", ("id", "reason", "n")),))
CLAIM = Step("fraud_claim", keys=("stream", "dead", "stats"),
             params=("group", "consumer", "stage", "min_idle_ms", "start", "count"))
TRIM = Step("fraud_trim", keys=("stream",), params=("keep_from",))
FORGET_IDLE = Step("fraud_forget_idle", keys=("stream",), params=("group", "idle_ms"))
