"""The plain-text view of a status snapshot: aligned columns, no dependency."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.core.units import clock, duration, size


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Columns padded to their widest cell; numbers right-aligned, text left-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(_numeric(r[i]) for r in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    return [line(list(headers)), *(line(r) for r in cells)]


def _numeric(value: Any) -> bool:
    # "~123" is an estimated number; "-" (None) a missing one: both align with the numbers.
    if isinstance(value, str):
        return value.startswith("~")
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def render(snap: Mapping[str, Any], where: str) -> str:
    out = [f"fraud status  {where}  namespace {snap['namespace']}  at {clock(snap['taken_at_ms'])} UTC", ""]
    out += table(
        ("STREAM", "LENGTH", "ADDED", "FIRST ENTRY (UTC)", "LAST ENTRY (UTC)", "MEMORY"),
        [(s["key"] + ("" if s["exists"] else " (absent)"), s["length"], s["entries_added"],
          clock(s["first_time_ms"]), clock(s["last_time_ms"]), size(s["memory_bytes"]))
         for s in snap["streams"].values()])
    out.append("")
    groups = snap["groups"]
    if groups:
        out += table(
            ("GROUP", "STREAM", "CONSUMERS", "PENDING", "LAG", "LAST DELIVERED", "ENTRIES READ"),
            [(name, g["stream"], g["consumers"], g["pending"], f"~{g['lag']:,}" if g["lag_estimated"] else g["lag"],
              g["last_delivered_id"], g["entries_read"]) for name, g in groups.items()])
        members = [(m["name"], name, m["pending"], duration(m["idle_ms"]), duration(m["inactive_ms"]))
                   for name, g in groups.items() for m in g["members"]]
        if members:
            out.append("")
            out += table(("CONSUMER", "GROUP", "PENDING", "IDLE", "INACTIVE"), members)
        if any(g["lag_estimated"] for g in groups.values()):
            out.append("~ lag estimated: Redis reports none after deletions in the stream")
    else:
        out.append("no consumer groups yet: no stage has run")
    out.append("")
    rates = snap["throughput"]
    if rates is None:
        out.append("THROUGHPUT  not measured (--interval 0)")
    else:
        per_stage = "  ".join(f"{stage} {_cell(rate)} clicks/s" for stage, rate in rates["clicks_per_s"].items())
        out.append(f"THROUGHPUT over {rates['over_s']:g} s  {per_stage}")
    dead = snap["dead_letters"]
    out.append("")
    out.append(f"DEAD LETTERS  {dead['count']:,}" +
               (f"  reasons of the last {dead['sampled']:,}:" if dead["sampled"] else ""))
    out += [f"  {n:>8,}  {reason}" for reason, n in dead["reasons"].items()]
    if snap["stats"]:
        out.append("")
        out += table(("COUNTER", "VALUE"), list(snap["stats"].items()))
    return "\n".join(out)
