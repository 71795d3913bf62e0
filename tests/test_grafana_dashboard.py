"""The Grafana dashboards: sound structure, and every query returns the pipeline's real numbers.

No Grafana server can run here, so each panel target is turned into the exact
Redis command the Redis Data Source plugin (redis-datasource 2.2) sends for it,
and that command runs against a live Redis Stack fed through the real pipeline.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from pipeline.cli.main import build_parser
from pipeline.core.keys import VERDICTS, Keys
from pipeline.core.settings import Settings
from tests.arrival import xadd_at_event_time
from tests.helpers import list_ips, one_device_per_partition, run_pipeline, stream_entries, verdicts_by_raw_id
from tests.plugin_replies import display_names, extract_json, plugin_frames, stream_frame
from tests.plugin_replies import rows as frame_rows
from tests.test_offenders import offenders_command

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_FILES = sorted((ROOT / "grafana/dashboards").glob("*.json"))
DATASOURCES = yaml.safe_load((ROOT / "grafana/provisioning/datasources/redis.yaml").read_text())
PROVIDERS = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/fraud.yaml").read_text())
DATASOURCE_UID = DATASOURCES["datasources"][0]["uid"]
KNOWN_PANEL_TYPES = frozenset((
    "row", "timeseries", "stat", "table", "gauge", "bargauge", "barchart", "piechart", "text",
    "heatmap", "histogram", "state-timeline", "status-history", "logs",
))
HEALTH_MEASURES = ("lag", "pending", "dead_letters", "throughput")
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
MINUTE_MS = 60_000
RAW_CLICKS = "namespace=${namespace} metric=clicks tier=raw"
STORED, LATEST_DEAD, LATEST_FLAGGED = (f"{title} (partition $partition)" for title in (
    "Dead letters stored", "Latest dead letters", "Latest flagged verdicts"))
# Each verdict's series, one per partition, summed per bucket by the server: the exact global count.
PER_VERDICT = {"tsGroupByLabel": "verdict", "tsReducer": "sum"}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


FRAUD = load(ROOT / "grafana/dashboards/fraud.json")


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, target


def panel(title: str) -> dict[str, Any]:
    return next(p for p in all_panels(FRAUD) if p["title"] == title)


# Grafana's template variable syntax (public/app/features/templating/template_srv.ts):
# $name, [[name]] or [[name:format]], ${name}, ${name.field} or ${name:format}.
VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\${(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?}")
# The target fields the plugin's frontend runs through templateSrv.replace before a query goes
# to its backend (src/datasource/datasource.ts, applyTemplateVariables); no other field is.
TEMPLATED_FIELDS = ("keyName", "query", "field", "filter", "legend", "value", "path", "cypher")


def dashboard_variables(dashboard: dict[str, Any]) -> dict[str, str]:
    """Each dashboard variable's default value, as Grafana starts with it."""
    return {v["name"]: v["current"]["value"] for v in dashboard["templating"]["list"]}


def substitute(text: str, variables: dict[str, str]) -> str:
    """templateSrv.replace for single-valued variables: the value as is (a single string gets no
    format by default); an unknown variable stays as written."""
    def value(match: re.Match[str]) -> str:
        name = match[1] or match[2] or match[4]
        assert not (match[3] or match[5] or match[6]), f"no mirror of variable formats/fields: {match[0]}"
        return variables.get(name, match[0])
    return VARIABLE.sub(value, text)


def apply_template_variables(target: dict[str, Any], variables: dict[str, str]) -> dict[str, Any]:
    """The target as the plugin's frontend hands it to its backend: variables replaced, absent
    templated fields sent as empty strings."""
    return {**target, **{name: substitute(target[name], variables) if target.get(name) else ""
                         for name in TEMPLATED_FIELDS}}


def plugin_command(target: dict[str, Any], from_ms: int, to_ms: int,
                   variables: dict[str, str] | None = None) -> list[str]:
    """The Redis command redis-datasource 2.2 sends for one target, argument for argument.

    Template variables first (the dashboard's defaults unless ``variables`` are given), as the
    plugin's frontend replaces them in the fields it lists, then the backend's command:

    Mirrors RedisGrafana/grafana-redis-datasource: pkg/query.go (dispatch on ``command``,
    from/to = the dashboard range in ms), pkg/redis-time-series.go (queryTsMRange,
    queryTsRange: AGGREGATION only when an aggregation is set; the filter split into
    words, shell-style; then GROUPBY tsGroupByLabel REDUCE tsReducer when a label is set) and
    pkg/redis-stream.go (queryXInfoStream; queryXRange and
    queryXRevRange, which default start/end to ``<from>-0``/``<to>-0`` since 2.0 and add
    COUNT only when count > 0). The command name goes out as written in the target.
    """
    target = sent_target(target, from_ms, to_ms, variables)
    if target["query"]:  # a custom command (pkg/redis-custom.go): the query split shell-style
        return shlex.split(target["query"])
    command = target["command"]
    aggregation = ["AGGREGATION", target["aggregation"], str(target.get("bucket", 0))] \
        if target.get("aggregation") else []
    if target["type"] == "timeSeries" and command == "ts.mrange":
        # GROUPBY <label> REDUCE <reducer> when a group-by label is set (and refused without a reducer);
        # the label is not templated.
        group = target.get("tsGroupByLabel")
        assert not group or target.get("tsReducer"), "the plugin refuses a group without a reducer"
        grouping = ["GROUPBY", group, "REDUCE", target["tsReducer"]] if group else []
        return [command, str(from_ms), str(to_ms), *aggregation, "WITHLABELS", "FILTER",
                *shlex.split(target["filter"]), *grouping]
    if target["type"] == "timeSeries" and command == "ts.range":
        return [command, target["keyName"], str(from_ms), str(to_ms), *aggregation]
    if target["type"] == "command" and command == "xinfoStream":
        return ["XINFO", "STREAM", target["keyName"]]
    if target["type"] == "command" and command in ("xrange", "xrevrange"):
        start = target.get("start") or f"{from_ms}-0"
        end = target.get("end") or f"{to_ms}-0"
        bounds = [start, end] if command == "xrange" else [end, start]
        count = ["COUNT", str(target["count"])] if target.get("count", 0) > 0 else []
        return [command.upper(), target["keyName"], *bounds, *count]
    if target["type"] == "command" and command in ("xlen", "hlen", "type", "get", "ttl", "llen", "scard"):
        return [command, target["keyName"]]
    raise AssertionError(f"no mirror of the plugin for target {target}: add one before using it")


def sent_target(target: dict[str, Any], from_ms: int, to_ms: int,
                variables: dict[str, str] | None = None) -> dict[str, Any]:
    """The target as the backend gets it: Grafana's global $__from/$__to (epoch ms) beside the
    dashboard's variables."""
    variables = dashboard_variables(FRAUD) if variables is None else variables
    return apply_template_variables(target, {**variables, "__from": str(from_ms), "__to": str(to_ms)})


def dashboard_range(dashboard: dict[str, Any], now_ms: int) -> tuple[int, int]:
    """The dashboard's default time range (``now-<n><unit>`` to ``now``) in epoch ms."""
    match = re.fullmatch(r"now-(\d+)([smhd])", dashboard["time"]["from"])
    assert match and dashboard["time"]["to"] == "now"
    unit_ms = {"s": 1_000, "m": MINUTE_MS, "h": 3_600_000, "d": 86_400_000}[match[2]]
    return now_ms - int(match[1]) * unit_ms, now_ms


def panel_range(p: dict[str, Any], from_ms: int, to_ms: int) -> tuple[int, int]:
    """The range a panel shows: the dashboard's, or its own relative time override (``timeFrom``)."""
    match = re.fullmatch(r"(\d+)([smhd])", p.get("timeFrom", ""))
    if match is None:
        return from_ms, to_ms
    return to_ms - int(match[1]) * {"s": 1_000, "m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS}[match[2]], to_ms


def frames(reply: list[Any], target: dict[str, Any]) -> dict[str, dict[int, float]]:
    """TS.MRANGE's RESP2 reply as Grafana names its series, by the plugin's frames (filled as it fills)."""
    built = plugin_frames(target, reply)
    names = display_names(built)
    assert len(set(names)) == len(names), f"series share a name {names}: their lines would merge"
    return {name: dict(zip(f.fields[0].values, f.fields[1].values, strict=True)) for name, f in zip(names, built,
                                                                                                   strict=True)}


def stream_rows(reply: list[Any]) -> list[dict[str, Any]]:
    """XRANGE/XREVRANGE entries as the plugin's table rows ($streamId, $time, then the fields, typed as it types)."""
    return frame_rows(stream_frame("xrevrange", reply))


def pairs(flat: list[str] | dict[str, str]) -> dict[str, str]:
    # redis-py already turns some replies (XRANGE's entries) into dicts.
    return flat if isinstance(flat, dict) else dict(zip(flat[::2], flat[1::2], strict=True))


def transform(rows: list[dict[str, str]], transformations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The few Grafana transformations the dashboard uses, applied to table rows as Grafana does."""
    for step in transformations:
        options = step["options"]
        if step["id"] == "extractFields":
            assert options == {"source": "Value", "format": "json", "replace": True, "keepTime": False}
            rows = extract_json(rows, "Value")
        elif step["id"] == "filterByValue":
            def hit(row: dict[str, str], filters: list[dict[str, Any]] = options["filters"]) -> bool:
                assert all(f["config"]["id"] == "equal" for f in filters)
                return any(row.get(f["fieldName"]) == f["config"]["options"]["value"] for f in filters)
            assert options["match"] == "any"
            rows = [r for r in rows if hit(r) == (options["type"] == "include")]
        elif step["id"] == "groupBy":
            keys = [name for name, f in options["fields"].items() if f["operation"] == "groupby"]
            counted = [name for name, f in options["fields"].items() if f["operation"] == "aggregate"]
            assert all(options["fields"][name]["aggregations"] == ["count"] for name in counted)
            groups = Counter(tuple(r[k] for k in keys) for r in rows)
            rows = [{**dict(zip(keys, group, strict=True)), **{f"{name} (count)": n for name in counted}}
                    for group, n in groups.items()]
        elif step["id"] == "sortBy":
            (sort,) = options["sort"]
            rows = sorted(rows, key=lambda r: r[sort["field"]], reverse=sort["desc"])
        elif step["id"] == "limit":
            rows = rows[:options["limitField"]]
        elif step["id"] == "organize":
            include = options.get("includeByName")
            rename = options.get("renameByName", {})
            rows = [{rename.get(k, k): v for k, v in r.items() if include is None or include.get(k)} for r in rows]
        else:
            raise AssertionError(f"transformation {step['id']} is not mirrored here")
    return rows


# --- structure -------------------------------------------------------------------------------

def test_there_is_a_dashboard() -> None:
    assert [p.name for p in DASHBOARD_FILES] == ["fraud.json"]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    dashboard = load(path)
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in all_panels(dashboard):
        assert p["type"] in KNOWN_PANEL_TYPES, f"{p['title']}: unknown panel type {p['type']}"
        grid = p["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid) and grid["x"] + grid["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["targets"], f"{p['title']} has no query"
            assert p["datasource"]["uid"] == DATASOURCE_UID
    refs = list(targets(dashboard))
    assert refs
    for p, target in refs:
        assert target["datasource"] == {"type": "redis-datasource", "uid": DATASOURCE_UID}, p["title"]
        plugin_command(target, 0, 1)  # raises on a target this test could not check


def test_fraud_dashboard_settings() -> None:
    assert FRAUD["uid"] == "fraud" and FRAUD["title"] == "Fraud"
    assert FRAUD["refresh"] == "5s"
    assert FRAUD["time"] == {"from": "now-15m", "to": "now"}


def test_provisioning_files() -> None:
    (source,) = DATASOURCES["datasources"]
    assert source["type"] == "redis-datasource" and source["uid"] == "fraud-redis"
    assert source["url"] == "redis://redis:6379" and source["access"] == "proxy"
    (provider,) = PROVIDERS["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_plugin_command_shapes() -> None:
    # The shapes read in the plugin's source, pinned so a careless edit of the mirror shows.
    target = {"type": "timeSeries", "command": "ts.mrange", "filter": "metric=clicks tier=raw",
              "aggregation": "sum", "bucket": 1000, "legend": "verdict"}
    assert plugin_command(target, 10, 20) == ["ts.mrange", "10", "20", "AGGREGATION", "sum", "1000",
                                              "WITHLABELS", "FILTER", "metric=clicks", "tier=raw"]
    assert plugin_command({**target, "tsGroupByLabel": "verdict", "tsReducer": "sum"}, 10, 20)[-6:] == [
        "metric=clicks", "tier=raw", "GROUPBY", "verdict", "REDUCE", "sum"]
    assert plugin_command({**target, "aggregation": ""}, 10, 20) == [
        "ts.mrange", "10", "20", "WITHLABELS", "FILTER", "metric=clicks", "tier=raw"]
    stream = {"type": "command", "command": "xrevrange", "keyName": "s", "count": 5}
    assert plugin_command(stream, 10, 20) == ["XREVRANGE", "s", "20-0", "10-0", "COUNT", "5"]
    # Variables, in every syntax Grafana reads, in the fields the plugin templates, and only there.
    assert plugin_command({**stream, "keyName": "${namespace}:dead", "start": "$namespace"}, 10, 20,
                          {"namespace": "{clicks}"}) == ["XREVRANGE", "{clicks}:dead", "20-0", "$namespace",
                                                          "COUNT", "5"]
    assert plugin_command({**target, "filter": "namespace=$namespace tier=[[tier]] x=$other"}, 10, 20,
                          {"namespace": "clicks:replay:a", "tier": "raw"})[-3:] == [
        "namespace=clicks:replay:a", "tier=raw", "x=$other"]
    assert plugin_command({**stream, "keyName": "${namespace}:dead"}, 10, 20)[1] == "clicks:dead", \
        "the dashboard's default namespace is the default FRAUD_NAMESPACE"


def test_every_query_follows_the_namespace_variable() -> None:
    assert dashboard_variables(FRAUD) == {"namespace": Keys().namespace, "partition": "0"}
    partitions = next(v for v in FRAUD["templating"]["list"] if v["name"] == "partition")
    assert [o["value"] for o in partitions["options"]] == [str(p) for p in range(Settings().partitions)]
    for p, target in targets(FRAUD):
        if "filter" in target:
            assert target["filter"].split()[0] == "namespace=${namespace}", p["title"]
        if "keyName" in target:
            assert target["keyName"].startswith("${namespace}:"), p["title"]
        # Nothing names a key or a namespace outright.
        assert "clicks:" not in json.dumps(target), p["title"]


# --- live data through the real pipeline -----------------------------------------------------

BLACKLISTED = [f"203.0.113.{i}" for i in range(1, 9)]


def crafted_clicks(t0: int, partitions: int) -> tuple[list[list[str]], int]:
    """Clean, blacklisted, spam, robotic and travelling clicks over three minutes from t0, in event-time order;
    and the invalid count. The invalid ones fall into three partitions (by their device_id, or none's)."""
    clicks: list[tuple[int, list[str]]] = []

    def click(device: str, ip: str, ts: int, *where: str) -> None:
        clicks.append((ts, ["device_id", device, "ip", ip, "ts", str(ts), *where]))

    for minute, (clean, listed, spam) in enumerate(((20, 5, 6), (10, 3, 5))):
        start = t0 + minute * MINUTE_MS
        for i in range(clean):
            click(f"c{minute}-{i}", f"10.1.{minute}.{i}", start + i * 2_000 + 7)
        for i in range(listed):
            click(f"b{minute}-{i}", BLACKLISTED[i + 4 * minute], start + 500 + i * 3_000)
        for k in range(spam):  # one device, far more than 2 clicks in 10 s
            click(f"s{minute}", f"10.2.{minute}.1", start + 30_000 + k * 200)
    # Minute 0: a metronome (its 6th click, 5 intervals of 6 s, is robotic); minute 1: Paris then Singapore 1 s
    # later (impossible_travel).
    for k in range(6):
        click("m0", "10.3.0.1", t0 + 1_000 + k * 6_000)
    click("t1", "10.3.1.1", t0 + MINUTE_MS + 40_000, "lat", "48.8566", "lon", "2.3522")
    click("t1", "10.3.1.1", t0 + MINUTE_MS + 41_000, "lat", "1.3521", "lon", "103.8198")
    # Minute 2: a later bucket in every partition, so that every partition's rollup closes minute 1.
    for i, device in enumerate(one_device_per_partition("c2-", partitions)):
        click(device, f"10.1.2.{i}", t0 + 2 * MINUTE_MS + i * 1_000)
    clicks.sort(key=lambda c: c[0])
    invalid = [["device_id", "bad-ip", "ip", "not-an-ip", "ts", str(t0 + 1_000)],
               ["ip", "10.9.9.9", "ts", str(t0 + 2_000)],
               ["device_id", "bad-ts", "ip", "10.9.9.8", "ts", "yesterday"]]
    return [c for _, c in clicks] + invalid, len(invalid)


def verdict_entries(settings: Settings) -> list[tuple[str, dict[str, str]]]:
    return [e for part in Keys(settings.namespace).partitions(settings.partitions)
            for e in stream_entries(settings, part.verdicts)]


async def feed(settings: Settings) -> tuple[int, int, list[str]]:
    """Run crafted clicks through detector and aggregator; returns (now ms, t0, ids of invalid entries)."""
    now_ms = int(time.time() * 1000)
    # Whole minutes inside the dashboard's range, ending well before now.
    t0 = (now_ms - 6 * MINUTE_MS) // MINUTE_MS * MINUTE_MS
    await list_ips(settings, BLACKLISTED)
    clicks, invalid = crafted_clicks(t0, settings.partitions)
    ids = xadd_at_event_time(settings, clicks)
    await run_pipeline(settings)
    return now_ms, t0, ids[-invalid:]


async def monitor_tick(settings: Settings) -> None:
    """One tick of the real monitor agent through the real CLI: it merges the partitions' offender
    buckets the offender tables read (and records the health series)."""
    args = build_parser().parse_args(["agent", "monitor", "--interval", "0.05", "--once"])
    assert await args.run(args, settings) == 0


def chosen(settings: Settings, partition: int = 0) -> dict[str, str]:
    """The dashboard's variables with the pipeline's namespace and a partition chosen."""
    return {**dashboard_variables(FRAUD), "namespace": settings.namespace, "partition": str(partition)}


def run(settings: Settings, target: dict[str, Any], from_ms: int, to_ms: int, partition: int = 0) -> Any:
    """The target's command, with the dashboard's namespace variable set to the pipeline's."""
    # RESP2, as the plugin's client (radix v3) speaks: TS.MRANGE replies a list, not a map.
    with redis.Redis.from_url(settings.redis_url, decode_responses=True, protocol=2) as client:
        return client.execute_command(*plugin_command(target, from_ms, to_ms, chosen(settings, partition)))


def shown_value(settings: Settings, target: dict[str, Any], from_ms: int, to_ms: int, partition: int = 0) -> float:
    """The one value a single-value panel shows, through the plugin's frame."""
    (frame,) = plugin_frames(sent_target(target, from_ms, to_ms, chosen(settings, partition)),
                             run(settings, target, from_ms, to_ms, partition))
    ((value,),) = [f.values for f in frame.fields]
    return value


def table(settings: Settings, title: str, from_ms: int, to_ms: int, partition: int = 0) -> list[dict[str, Any]]:
    """A table panel's rows as Grafana shows them: the plugin's frame, then the panel's transformations."""
    p = panel(title)
    (target,) = p["targets"]
    (frame,) = plugin_frames(sent_target(target, from_ms, to_ms, chosen(settings, partition)),
                             run(settings, target, from_ms, to_ms, partition))
    return transform(frame_rows(frame), p.get("transformations", []))


def verdict_cells(settings: Settings, bucket_ms: int) -> dict[str, dict[int, float]]:
    """Verdicts per event-time bucket, from the verdict stream itself."""
    cells: dict[str, dict[int, float]] = {}
    for _, fields in verdict_entries(settings):
        ts = int(fields["ts"])
        series = cells.setdefault(fields["verdict"], {})
        series[ts - ts % bucket_ms] = series.get(ts - ts % bucket_ms, 0) + 1
    return cells


async def test_clicks_per_second_is_exact(settings: Settings) -> None:
    now_ms, _, _ = await feed(settings)
    verdicts = Counter(verdicts_by_raw_id(settings).values())
    assert set(verdicts) == set(VERDICTS), "the crafted traffic must produce every verdict"
    expected = verdict_cells(settings, 1_000)
    clicks = [t for _, t in targets(FRAUD) if "metric=clicks" in t.get("filter", "")]
    assert clicks and all(t.items() >= PER_VERDICT.items() for t in clicks), "one line per verdict, not partition"
    raw_panels = [(p, t) for p, t in targets(FRAUD) if t.get("filter") == RAW_CLICKS and t["bucket"] == 1_000]
    assert {p["title"] for p, _ in raw_panels} == {"Clicks/s by verdict, last hour"}
    for p, target in raw_panels:
        got = frames(run(settings, target, *panel_range(p, *dashboard_range(FRAUD, now_ms))), target)
        # One line per verdict (the rollup tier is filtered out), each sample the count of one second;
        # the aggregator writes explicit zeros for the verdicts a busy second did not see.
        assert set(got) == set(expected), p["title"]
        assert {v: {t: n for t, n in s.items() if n} for v, s in got.items()} == expected, p["title"]
        assert all(t in got["clean"] for t in expected["click_spam"]), "zeros are written beside counts"
        assert {v: int(sum(s.values())) for v, s in got.items()} == verdicts


async def test_fraud_share_is_exact_per_minute(settings: Settings) -> None:
    now_ms, t0, _ = await feed(settings)
    p = panel("Fraud share per minute")
    assert p["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "percent"
    (target,) = p["targets"]
    assert target["bucket"] == MINUTE_MS
    got = frames(run(settings, target, *dashboard_range(FRAUD, now_ms)), target)
    per_minute = verdict_cells(settings, MINUTE_MS)
    # Every minute, the open one included, with every verdict's exact count (zeros where none).
    assert {v: {t: n for t, n in s.items() if n} for v, s in got.items()} == per_minute
    assert got["click_spam"] == {t0: 4.0, t0 + MINUTE_MS: 3.0, t0 + 2 * MINUTE_MS: 0.0}
    assert got["ip_blacklist"] == {t0: 5.0, t0 + MINUTE_MS: 3.0, t0 + 2 * MINUTE_MS: 0.0}
    assert got["robotic"] == {t0: 1.0, t0 + MINUTE_MS: 0.0, t0 + 2 * MINUTE_MS: 0.0}
    assert got["impossible_travel"] == {t0: 0.0, t0 + MINUTE_MS: 1.0, t0 + 2 * MINUTE_MS: 0.0}
    # The metronome's first five clicks and the traveller's first are clean.
    assert got["clean"] == {t0: 22.0 + 5, t0 + MINUTE_MS: 12.0 + 1, t0 + 2 * MINUTE_MS: float(settings.partitions)}
    # The rollup tier: RedisTimeSeries compacts a minute of a series once that series gets a
    # sample of a later minute (the plugin sends no LATEST). The aggregator writes every verdict
    # in every busy bucket, zeros included, so every series closes the same minutes: all but
    # the newest, each exact, even for a verdict that stopped (spam stops after t0 + 1 min).
    rollup = frames(run(settings, {**target, "filter": target["filter"].replace("tier=raw", "tier=rollup")},
                        *dashboard_range(FRAUD, now_ms)), target)
    newest = max(max(minutes) for minutes in per_minute.values())
    for verdict, minutes in per_minute.items():
        closed = {m: n for m, n in rollup[verdict].items() if n}
        assert closed == {m: n for m, n in minutes.items() if m != newest}, verdict
        assert set(rollup[verdict]) == {t0, t0 + MINUTE_MS}, verdict


async def test_health_panels_select_the_monitor_series(settings: Settings) -> None:
    now_ms = int(time.time() * 1000)
    keys = Keys(settings.namespace)
    at = now_ms - 2 * MINUTE_MS
    at -= at % 5_000
    written: dict[tuple[str, str], list[int]] = {}
    with redis.Redis.from_url(settings.redis_url) as client:
        # Series as the monitor agent records them: key Keys.health_series(measure, subject),
        # labels metric=pipeline_health measure=<measure> stage=<stage>.
        for n, measure in enumerate(HEALTH_MEASURES):
            for stage in ("detector", "aggregator"):
                values = [n * 10 + len(stage), n * 10 + len(stage) + 5, 1]
                written[measure, stage] = values
                key = keys.health_series(measure, stage)
                client.execute_command("TS.CREATE", key, "LABELS", *keys.series_labels(), "metric",
                                       "pipeline_health", "measure", measure, "stage", stage)
                for i, value in enumerate(values):  # three samples in one 5 s bucket
                    client.execute_command("TS.ADD", key, at + i * 1_000, value)
        # Look-alikes that no health panel may pick up.
        client.execute_command("TS.CREATE", "decoy", "LABELS", *keys.series_labels(), "metric", "clicks",
                               "measure", "lag", "stage", "detector")
        client.execute_command("TS.ADD", "decoy", at, 999)
        # The same series of another namespace (another pipeline, or a replay) on the same server.
        other = Keys("elsewhere")
        client.execute_command("TS.CREATE", other.health_series("lag", "detector"), "LABELS",
                               *other.series_labels(), "metric", "pipeline_health", "measure", "lag",
                               "stage", "detector")
        client.execute_command("TS.ADD", other.health_series("lag", "detector"), at, 999)
    health = [(p, t) for p, t in targets(FRAUD) if "metric=pipeline_health" in t.get("filter", "")]
    assert sorted(t["filter"].split("measure=")[1] for _, t in health) == sorted(HEALTH_MEASURES)
    for p, target in health:
        measure = target["filter"].split("measure=")[1]
        got = frames(run(settings, target, *dashboard_range(FRAUD, now_ms)), target)
        assert got == {stage: {at: float(max(written[measure, stage]))} for stage in ("detector", "aggregator")}, \
            p["title"]


async def test_dead_letter_panels_show_the_rejected_entries(settings: Settings) -> None:
    now_ms, _, invalid_ids = await feed(settings)
    from_ms, to_ms = dashboard_range(FRAUD, now_ms)
    (stored_target,) = panel(STORED)["targets"]
    (latest_target,) = panel(LATEST_DEAD)["targets"]
    shown_ids = []
    # The stream panels show the partition chosen in the dashboard's variable.
    for part in Keys(settings.namespace).partitions(settings.partitions):
        assert substitute(stored_target["keyName"], chosen(settings, part.number)) == part.dead
        dead = stream_entries(settings, part.dead)
        assert shown_value(settings, stored_target, from_ms, to_ms, part.number) == len(dead)
        rows = stream_rows(run(settings, latest_target, from_ms, to_ms, part.number))
        assert [r["$streamId"] for r in rows] == [entry_id for entry_id, _ in reversed(dead)], "newest first"
        assert all(r["reason"] and r["stage"] == "detector" for r in rows)
        shown_ids += [r["raw_id"] for r in rows]
    assert sorted(shown_ids) == sorted(invalid_ids)


async def test_offender_tables_rank_the_flagged_verdicts_of_the_whole_range(settings: Settings) -> None:
    _, t0, _ = await feed(settings)
    await monitor_tick(settings)
    from_ms, to_ms = dashboard_range(FRAUD, int(time.time() * 1000))
    flagged = [f for _, f in verdict_entries(settings) if f["verdict"] != "clean"]
    assert len(flagged) == 4 + 3 + 5 + 3 + 1 + 1
    for title, field in (("Top offending devices", "device_id"), ("Top offending IPs", "ip")):
        (target,) = panel(title)["targets"]
        # The panel's command is the declared read over the monitor's merged buckets, with the
        # pipeline's spans and the dashboard's range.
        declared = offenders_command(Settings(), field, from_ms, to_ms, limit=10, merged=True)
        assert plugin_command(target, from_ms, to_ms) == declared, title
        assert plugin_command(target, from_ms, to_ms, chosen(settings)) == offenders_command(
            settings, field, from_ms, to_ms, limit=10, merged=True), "it follows the namespace"
        shown = table(settings, title, from_ms, to_ms)
        counts = Counter(f[field] for f in flagged)
        assert [r["flagged clicks"] for r in shown] == sorted(counts.values(), reverse=True)[:10]
        assert all(counts[r[field]] == r["flagged clicks"] == sum(r[v] for v in VERDICTS[1:]) for r in shown)
        assert shown[0] == {field: "s0" if field == "device_id" else "10.2.0.1", "flagged clicks": 4,
                            "ip_blacklist": 0, "click_spam": 4, "impossible_travel": 0, "robotic": 0}
    # Only the clicks of the range: one that starts after the first minute leaves it out.
    late = table(settings, "Top offending devices", t0 + MINUTE_MS, to_ms)
    assert {r["device_id"]: r["flagged clicks"] for r in late} == dict(
        Counter(f["device_id"] for f in flagged if int(f["ts"]) >= t0 + MINUTE_MS))
    rows = [r for p in range(settings.partitions) for r in table(settings, LATEST_FLAGGED, from_ms, to_ms, p)]
    assert sorted(r["raw_id"] for r in rows) == sorted(f["raw_id"] for f in flagged)
    assert all(set(r) == {"$time", "verdict", "device_id", "ip", "raw_id"} for r in rows)


async def test_offender_tables_keep_numeric_looking_names_apart(settings: Settings) -> None:
    # The plugin types a stream column by its first value; the offender tables parse JSON rows instead.
    t0 = (int(time.time() * 1000) - 3 * MINUTE_MS) // MINUTE_MS * MINUTE_MS
    clicks = [["device_id", device, "ip", f"10.4.0.{n}", "ts", str(t0 + n * 1_000 + k)]
              for n, device in enumerate(["abc", "def", "12345"]) for k in range(3 + n)]
    xadd_at_event_time(settings, clicks)
    await run_pipeline(settings)
    await monitor_tick(settings)
    from_ms, to_ms = dashboard_range(FRAUD, int(time.time() * 1000))
    shown = table(settings, "Top offending devices", from_ms, to_ms)
    assert [(r["device_id"], r["flagged clicks"]) for r in shown] == [("12345", 3), ("def", 2), ("abc", 1)]


async def test_every_panel_reads_well_on_an_empty_pipeline(settings: Settings) -> None:
    # The agents have started (functions loaded, groups made) but no click has come yet.
    await run_pipeline(settings)
    from_ms, to_ms = dashboard_range(FRAUD, int(time.time() * 1000))
    for p, target in targets(FRAUD):
        # A command error is the panel's error: none may fail on a pipeline that is merely idle.
        reply = run(settings, target, from_ms, to_ms)
        built = plugin_frames(sent_target(target, from_ms, to_ms, {"namespace": settings.namespace}), reply)
        if p["type"] == "table":
            assert transform(frame_rows(built[0]), p.get("transformations", [])) == [], p["title"]
        elif p["title"] == STORED:
            assert shown_value(settings, target, from_ms, to_ms) == 0
        else:
            assert all(not f.fields[0].values for f in built), p["title"]


async def test_the_range_total_reads_two_samples_whatever_the_range(settings: Settings) -> None:
    now_ms, _, _ = await feed(settings)
    (target,) = panel("Clicks in range by verdict")["targets"]
    assert panel("Clicks in range by verdict")["options"]["reduceOptions"]["calcs"] == ["sum"]
    verdicts = Counter(verdicts_by_raw_id(settings).values())
    for from_ms in (now_ms - 15 * MINUTE_MS, now_ms - 7 * 24 * 3_600_000):
        got = frames(run(settings, target, from_ms, now_ms), target)
        assert all(len(samples) <= 2 for samples in got.values()), "the plugin ignores Grafana's point limit"
        assert {v: int(sum(s.values())) for v, s in got.items()} == verdicts


async def test_health_panels_plot_what_the_real_monitor_records(settings: Settings) -> None:
    _, _, invalid_ids = await feed(settings)
    # The real agent through the real CLI: one tick, then exit.
    args = build_parser().parse_args(["agent", "monitor", "--interval", "0.2", "--once"])
    assert await args.run(args, settings) == 0
    from_ms, to_ms = dashboard_range(FRAUD, int(time.time() * 1000) + 1)
    got = {t["filter"].split("measure=")[1]: frames(run(settings, t, from_ms, to_ms), t)
           for _, t in targets(FRAUD) if "metric=pipeline_health" in t.get("filter", "")}
    # The pipeline ran dry: nothing lags or waits; the dead letters are the invalid clicks.
    every_stage = {"router": [0.0], "detector": [0.0], "aggregator": [0.0]}
    assert {stage: list(s.values()) for stage, s in got["lag"].items()} == every_stage
    assert {stage: list(s.values()) for stage, s in got["pending"].items()} == every_stage
    assert {stage: list(s.values()) for stage, s in got["dead_letters"].items()} == {"dead": [len(invalid_ids)]}
    assert set(got["throughput"]) <= {"router", "detector", "aggregator"}
    assert all(v >= 0 for s in got["throughput"].values() for v in s.values())


@pytest.mark.parametrize("namespace", ["{clicks}", "clicks:replay:whatif"])
async def test_panels_show_only_the_namespace_chosen(settings: Settings, namespace: str) -> None:
    # The live pipeline and another one (a cluster namespace, or a replay's key space) on one server.
    now_ms, t0, _ = await feed(settings)
    other = replace(settings, namespace=namespace)
    xadd_at_event_time(other, [["device_id", f"o{i}", "ip", "10.3.0.1", "ts", str(t0 + i)] for i in range(7)]
             + [["device_id", "no-ip", "ts", str(t0)]])
    await run_pipeline(other)
    for shown in (settings, other):
        for p, target in targets(FRAUD):
            if target.get("filter") == RAW_CLICKS:
                got = frames(run(shown, target, *dashboard_range(FRAUD, now_ms)), target)
                nonzero = {v: {t: n for t, n in s.items() if n} for v, s in got.items()}
                assert {v: s for v, s in nonzero.items() if s} == verdict_cells(shown, target["bucket"]), \
                    (shown.namespace, p["title"])
        (stored_target,) = panel(STORED)["targets"]
        assert sum(shown_value(shown, stored_target, 0, now_ms, p) for p in range(shown.partitions)) == (
            3 if shown is settings else 1)


# What one panel may ask for, per series: about a week of minutes. The plugin asks Redis for every
# bucket of the range, whatever Grafana's point limit.
MAX_POINTS = 11_000


@pytest.mark.parametrize("days", [1, 7, 90])
def test_no_panel_asks_for_more_points_than_it_can_show(days: int) -> None:
    settings = Settings()
    now_ms = int(time.time() * 1000)
    for p, target in targets(FRAUD):
        if target.get("command") != "ts.mrange":
            continue
        from_ms, to_ms = panel_range(p, now_ms - days * DAY_MS, now_ms)
        kept_ms = settings.rollup_retention_ms if "tier=rollup" in target["filter"] else settings.series_retention_ms
        asked = min(to_ms - from_ms, kept_ms) // int(target["bucket"])
        assert asked <= MAX_POINTS, f"{p['title']}: {asked} points per series over {days} days"


async def test_long_ranges_read_the_rollup_tier_per_hour(settings: Settings) -> None:
    now_ms, _, _ = await feed(settings)
    p = panel("Clicks per hour by verdict (rollup tier)")
    (target,) = p["targets"]
    assert "tier=rollup" in target["filter"] and target["bucket"] == HOUR_MS
    got = frames(run(settings, target, *panel_range(p, now_ms - 90 * DAY_MS, now_ms)), target)
    # The rollup holds every closed minute (all but the newest, whose series has no later sample yet).
    per_minute = verdict_cells(settings, MINUTE_MS)
    newest = max(max(minutes) for minutes in per_minute.values())
    per_hour: dict[str, dict[int, float]] = {}
    for verdict, minutes in per_minute.items():
        for minute, n in minutes.items():
            if minute != newest:
                hours = per_hour.setdefault(verdict, {})
                hours[minute - minute % HOUR_MS] = hours.get(minute - minute % HOUR_MS, 0) + n
    assert {v: {h: n for h, n in s.items() if n} for v, s in got.items() if any(s.values())} == per_hour
