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


def _lag(lag: int, estimated: bool) -> int | str:
    return f"~{lag:,}" if estimated else lag


def _owner(unit: Mapping[str, Any], now_ms: int) -> str:
    """The lease's owner, and for how long it still holds (by the server's clock), or that it ran out."""
    lease = unit["lease"]
    if lease["owner"] is None:
        return "(free)"
    if lease["live"]:
        return f"{lease['owner']} (epoch {lease['epoch']}, {duration(lease['until_ms'] - now_ms)} left)"
    return f"{lease['owner']} (epoch {lease['epoch']}, ran out)"


def stage_rows(snap: Mapping[str, Any]) -> list[str]:
    """One row per unit of each stage (the router's ``clicks:raw``, then each partition), a total
    per stage, then each stage's live members."""
    rows: list[tuple[Any, ...]] = []
    for name, stage in snap["stages"].items():
        for u in stage["units"]:
            rows.append((name, "raw" if u["partition"] is None else u["partition"], _owner(u, snap["server_time_ms"]),
                         u["length"], u["pending"], _lag(u["lag"], u["lag_estimated"]),
                         u["last_delivered_id"], u["entries_read"]))
        if stage["partitioned"]:
            t = stage["totals"]
            rows.append((name, "total", f"{t['owned']} of {t['units']} owned", t["length"], t["pending"],
                         _lag(t["lag"], t["lag_estimated"]), None, None))
    out = table(("STAGE", "PARTITION", "OWNER", "LENGTH", "PENDING", "LAG", "LAST DELIVERED", "ENTRIES READ"), rows)
    out.append("")
    out += table(("STAGE", "LIVE MEMBERS"),
                 [(name, ", ".join(stage["members"]) or "none") for name, stage in snap["stages"].items()])
    if any(s["totals"]["lag_estimated"] for s in snap["stages"].values()):
        out.append("~ lag estimated: Redis reports none after deletions in the stream")
    return out


def shard_rows(shards: Sequence[Mapping[str, Any]]) -> list[str]:
    """One row per node (the one server, or each node of a cluster): its partitions listed."""
    return table(("SHARD", "ROLE", "STATE", "MEMORY", "OPS/S", "PARTITIONS"),
                 [(s["address"], s["role"] if s["master"] is None else f"replica of {s['master']}", s["state"],
                   None if s["used_memory"] is None else size(s["used_memory"]), s["ops_per_sec"],
                   ",".join(map(str, s["partitions"])) or "none") for s in shards])


def render(snap: Mapping[str, Any], where: str) -> str:
    out = [f"fraud status  {where}  namespace {snap['namespace']}  partitions {snap['partitions']}  "
           f"at {clock(snap['taken_at_ms'])} UTC", ""]
    out += table(
        ("STREAM", "LENGTH", "ADDED", "FIRST ENTRY (UTC)", "LAST ENTRY (UTC)", "MEMORY"),
        [(s["key"] + ("" if s["exists"] else " (absent)"), s["length"], s["entries_added"],
          clock(s["first_time_ms"]), clock(s["last_time_ms"]), size(s["memory_bytes"]))
         for s in snap["streams"].values()])
    out.append("")
    if "shards" in snap:
        out += shard_rows(snap["shards"])
        out.append("")
    out += stage_rows(snap)
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
        out += table(("COUNTER (all partitions)", "VALUE"), list(snap["stats"].items()))
    return "\n".join(out)
