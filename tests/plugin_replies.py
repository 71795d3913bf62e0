"""What redis-datasource 2.2 and Grafana make of a reply: frames, field names and types, fill.

Mirrors the plugin's pkg/redis-time-series.go (queryTsMRange: frame named by the legend label's
value, else the key; value field named by the ``value`` label's value, else ""; labels on it only
without a legend; zeros filled between samples), pkg/redis-stream.go (createFrameFromRangeResponse:
a column is float64 when its first value parses as a number, and then a later non-number is 0),
pkg/data-frame.go (createFrameValue) and pkg/redis-custom.go (queryCustomCommand: an array reply is
one string field "Value", "(empty array)" when empty). A panel shows an error when the command does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

EMPTY_ARRAY = "(empty array)"
# What Go's strconv.ParseFloat accepts, decimal forms (the pipeline writes no hex floats).
GO_FLOAT = re.compile(r"[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf(inity)?|nan)", re.IGNORECASE)


@dataclass
class Field:
    name: str
    type: str  # "time", "float64", "string"
    values: list[Any]
    labels: dict[str, str] | None = None


@dataclass
class Frame:
    name: str
    fields: list[Field] = field(default_factory=list)


def parses_as_float(text: str) -> bool:
    return GO_FLOAT.fullmatch(text) is not None


def value_frame(name: str, value: str, field_name: str) -> Frame:
    """createFrameValue: one float64 value when it parses, else one string."""
    if parses_as_float(value):
        return Frame(name, [Field(field_name, "float64", [float(value)])])
    return Frame(name, [Field(field_name, "string", [value])])


def mrange_frames(reply: list[Any], target: dict[str, Any]) -> list[Frame]:
    out = []
    fill, bucket = target.get("fill"), target.get("bucket", 0)
    for key, raw_labels, samples in reply:
        labels = dict(raw_labels)
        legend = labels.get(target["legend"], "") if target.get("legend") else key
        value_name = labels.get(target["value"], "") if target.get("value") else ""
        times: list[int] = []
        values: list[float] = []
        for ts, value in samples:
            ts = int(ts)
            while fill and bucket and times and ts - times[-1] > bucket:
                times.append(times[-1] + bucket)
                values.append(0.0)
            times.append(ts)
            values.append(float(value))
        out.append(Frame(legend, [Field("time", "time", times),
                                  Field(value_name, "float64", values, None if target.get("legend") else labels)]))
    return out


def stream_frame(command: str, reply: list[Any]) -> Frame:
    ids, times = Field("$streamId", "string", []), Field("$time", "time", [])
    columns: dict[str, Field] = {}
    for row, (entry_id, flat) in enumerate(reply):
        ids.values.append(entry_id)
        times.values.append(int(entry_id.split("-")[0]))
        pairs = flat.items() if isinstance(flat, dict) else zip(flat[::2], flat[1::2], strict=True)
        seen = set()
        for name, value in pairs:
            if name not in columns:
                numeric = parses_as_float(value)
                columns[name] = Field(name, "float64" if numeric else "string", [0.0 if numeric else ""] * row)
            column = columns[name]
            column.values.append((float(value) if parses_as_float(value) else 0.0)
                                 if column.type == "float64" else value)
            seen.add(name)
        for name, column in columns.items():
            if name not in seen:
                column.values.append(0.0 if column.type == "float64" else "")
    return Frame(command, [ids, times, *columns.values()])


def custom_frame(key: str, reply: Any) -> Frame:
    if isinstance(reply, int):
        return Frame(key, [Field("Value", "int64", [reply])])
    if isinstance(reply, str):
        lines = reply.replace("\r\n", "\n").split("\n")
        return value_frame(key, lines[0], "Value") if len(lines) == 1 else Frame(key, [Field("Value", "string", lines)])
    assert isinstance(reply, list), f"the plugin refuses a {type(reply)} reply"
    return Frame(key, [Field("Value", "string", flatten(reply) if reply else [EMPTY_ARRAY])])


def flatten(items: list[Any]) -> list[str]:
    out: list[str] = []
    for item in items:
        out += (flatten(item) or [EMPTY_ARRAY]) if isinstance(item, list) else [str(item)]
    return out


def plugin_frames(target: dict[str, Any], reply: Any) -> list[Frame]:
    """The frames the plugin's backend returns for a target's reply (target as sent: templated)."""
    if target.get("query"):
        return [custom_frame(target.get("keyName", ""), reply)]
    command = target["command"]
    if command == "ts.mrange":
        return mrange_frames(reply, target)
    if command in ("xrange", "xrevrange"):
        return [stream_frame(command, reply)]
    if command in ("xlen", "hlen", "type", "get", "ttl", "llen", "scard"):
        return [value_frame(target["keyName"], str(reply), "Value")]
    raise AssertionError(f"no mirror of the plugin's reply handling for {command}")


def display_names(frames: list[Frame]) -> list[str]:
    """Grafana's name for each frame's value field (simplified getFieldDisplayName): the field's own
    name, else its frame's name when there are several frames, else "Value"."""
    names = []
    for frame in frames:
        value = frame.fields[-1]
        names.append(value.name or (frame.name if len(frames) > 1 else "Value"))
    return names


def rows(frame: Frame) -> list[dict[str, Any]]:
    n = len(frame.fields[0].values) if frame.fields else 0
    return [{f.name: f.values[i] for f in frame.fields} for i in range(n)]


def extract_json(rows_in: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    """Grafana's extractFields (format json, replace): each row's source parsed; what does not parse
    gives no fields; the columns are every key seen, in first-seen order, null where absent."""
    parsed = []
    for row in rows_in:
        try:
            value = json.loads(row[source])
        except (ValueError, TypeError):
            value = {}
        parsed.append(value if isinstance(value, dict) else {})
    names = list(dict.fromkeys(name for value in parsed for name in value))
    return [{name: value.get(name) for name in names} for value in parsed] if names else []
