"""fraud bench reports its figures (the figures themselves are for the closing note, not a test)."""

from __future__ import annotations

import re
import socket
import subprocess
import tempfile
from pathlib import Path

import orjson
import pytest
import redis

from pipeline.cli.main import main
from pipeline.core.settings import Settings
from pipeline.dev import cluster as local_cluster
from pipeline.dev.ports import free_ports
from pipeline.dev.server import EmbeddedRedis

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def test_bench_pushes_every_click_through_and_reports(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FRAUD_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("FRAUD_HOME", str(settings.home))
    assert main(["bench", "--use-running", "--clicks", "3000", "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["clicks"] == 3000
    assert report["clicks_per_s"] > 0
    assert 0 <= report["latency_ms_p50"] <= report["latency_ms_p99"]
    assert set(report["cpu_us_per_click"]) == {"router-0", "detector-0", "detector-1", "aggregator-0", "producer",
                                               "redis"}
    assert (report["partitions"], report["direct"], report["routers"]) == (settings.partitions, False, 1)
    assert report["finished"]["router"] == 3000
    assert report["persistence"] == "AOF appendfsync everysec"  # as the suite's server runs
    verdicts = report["verdicts"]
    accepted = sum(verdicts.get(v, 0) for v in ("clean", "ip_blacklist", "click_spam"))
    # Every click has one outcome, and every verdict was counted.
    assert accepted + verdicts.get("duplicate", 0) + verdicts.get("dead", 0) == 3000
    assert report["counted"] == accepted


def test_bench_direct_writes_into_the_partitions_without_a_router(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FRAUD_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("FRAUD_HOME", str(settings.home))
    assert main(["bench", "--use-running", "--clicks", "3000", "--detectors", "1", "--direct", "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert set(report["cpu_us_per_click"]) == {"detector-0", "aggregator-0", "producer", "redis"}
    assert (report["direct"], report["routers"]) == (True, 0)
    # Nothing went through clicks:raw, and every click still has one outcome.
    assert report["finished"] == {"router": 0, "detector": 3000, "aggregator": report["counted"]}


def test_bench_on_a_running_server_keeps_to_a_namespace_it_clears_each_run(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FRAUD_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("FRAUD_HOME", str(settings.home))
    pipeline_key = f"{settings.namespace}:raw"
    with redis.Redis.from_url(settings.redis_url) as client:
        client.xadd(pipeline_key, {"device_id": "d1", "ip": "192.0.2.1", "ts": "1"})
    reports = []
    for _ in range(2):
        assert main(["bench", "--use-running", "--clicks", "2000", "--detectors", "1", "--direct", "--json"]) == 0
        reports.append(orjson.loads(capsys.readouterr().out))
    # The second run's seeded clicks are judged afresh, not as duplicates of the first run's.
    assert reports[0]["verdicts"] == reports[1]["verdicts"]
    with redis.Redis.from_url(settings.redis_url) as client:
        assert client.xlen(pipeline_key) == 1  # the pipeline's own namespace is left alone
        assert client.exists(f"{settings.namespace}-bench:{{0}}:verdicts")


def test_bench_on_a_running_server_without_the_library_says_so_at_once(
        fresh_server: EmbeddedRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Agents wait for `fraud setup` as they wait out a restart; the bench would wait for them in vain."""
    with redis.Redis.from_url(fresh_server.url) as client:
        client.function_flush()
    monkeypatch.setenv("FRAUD_REDIS_URL", fresh_server.url)
    monkeypatch.setenv("FRAUD_HOME", str(tmp_path))
    assert main(["bench", "--use-running", "--clicks", "100"]) == 1
    assert "the 'fraud' function library is not loaded; an admin loads it with `fraud setup`" in capsys.readouterr().err


@pytest.fixture
def bench_home(tmp_path: Path, libssl_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A FRAUD_HOME of the test's own, sharing the session's libssl with every server it starts."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "libssl").symlink_to(libssl_dir, target_is_directory=True)
    monkeypatch.setenv("FRAUD_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def own_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temporary folders (a baseline's worktree among them) under this test's own tmp_path, so that a
    check for leftover worktrees sees this test's only, never another bench run's in the same repo."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return temp


def baseline_worktrees() -> list[str]:
    """This test's baseline worktrees still registered with git (none once a bench has ended)."""
    listing = subprocess.run(["git", "worktree", "list", "--porcelain"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, check=True).stdout
    mine = f"worktree {tempfile.gettempdir()}/fraud-baseline-"
    return [line for line in listing.splitlines() if line.startswith(mine)]


def test_baseline_benches_both_designs_side_by_side(bench_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert main(["bench", "--baseline", "HEAD", "--clicks", "2000", "--repeat", "1", "--compare-detectors", "1"]) == 0
    captured = capsys.readouterr()
    rows = {line.split()[0]: line for line in captured.out.splitlines() if line.startswith(("baseline ", "current "))}
    assert set(rows) == {"baseline", "current"}
    for design, row in rows.items():
        # design, commit, detectors, then clicks/s, Redis and all-process CPU: median (min-max) each.
        assert re.fullmatch(rf"{design}\s+{head[:10]}(\+dirty)?\s+1\s+[\d,]+ \([\d,]+-[\d,]+\)\s+"
                            r"[\d.]+ \([\d.]+-[\d.]+\)\s+[\d.]+ \([\d.]+-[\d.]+\)\s+AOF appendfsync everysec", row), row
    # Each design ran its own tree's code: the baseline's from the worktree, the current from this tree.
    assert f"current {head[:10]}" in captured.err and f"imports {PROJECT_ROOT}/pipeline/" in captured.err
    assert re.search(r"baseline \w+ imports \S*fraud-baseline-\w+/tree/pipeline/", captured.err)
    assert re.search(r"^load average \(1 min\) as the runs began: [\d.]+-[\d.]+$", captured.out, re.MULTILINE)
    assert baseline_worktrees() == []


def test_baseline_json_carries_every_run(bench_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--baseline", "HEAD", "--clicks", "2000", "--repeat", "1", "--compare-detectors", "1",
                 "--no-aof", "--rate", "4000", "--json"]) == 0
    document = orjson.loads(capsys.readouterr().out)
    assert document["baseline"]["commit"] == document["current"]["commit"]
    assert [(run["design"], run["detectors"]) for run in document["runs"]] == [("baseline", 1), ("current", 1)]
    for run in document["runs"]:
        assert run["report"]["clicks"] == 2000 and run["report"]["clicks_per_s"] > 0
        assert run["report"]["persistence"] == "without AOF"
        assert run["load_before"] >= 0
    assert [row["design"] for row in document["summary"]] == ["baseline", "current"]
    assert all(row["redis_cpu_us_per_click"]["median"] > 0 for row in document["summary"])
    # At an offered rate each design's latency, as median (min-max) of its runs.
    assert all(0 <= row["latency_ms_p50"]["min"] <= row["latency_ms_p50"]["median"] <= row["latency_ms_p99"]["median"]
               for row in document["summary"])


def test_a_failing_baseline_run_is_one_line_and_leaves_no_worktree(bench_home: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # A bench that cannot finish in a millisecond fails for certain, after its worktree was made.
    assert main(["bench", "--baseline", "HEAD", "--clicks", "2000", "--repeat", "1", "--timeout", "0.001"]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("fraud: error: the baseline bench (") and "did not finish in time" in error
    assert baseline_worktrees() == []


def test_baseline_needs_a_commit_and_git(bench_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--baseline", "no-such-ref-anywhere"]) == 1
    assert capsys.readouterr().err.startswith("fraud: error: --baseline 'no-such-ref-anywhere' names no commit")
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no git on it
    assert main(["bench", "--baseline", "HEAD"]) == 1
    assert capsys.readouterr().err == "fraud: error: --baseline needs git, and git is not on PATH\n"


def test_comparison_options_need_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--compare-detectors", "1,2"]) == 2
    assert "need --baseline" in capsys.readouterr().err
    assert main(["bench", "--baseline", "HEAD", "--use-running"]) == 2
    assert "drop --use-running" in capsys.readouterr().err


def test_breakdown_shows_each_stage_with_and_without_aof(bench_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each stage alone on a fresh server, with AOF and without: Redis CPU per click, per command,
    and the share of each step that is the Lua call itself; every click went through every stage."""
    assert main(["bench", "--breakdown", "--clicks", "2000", "--json"]) == 0
    runs = orjson.loads(capsys.readouterr().out)
    assert list(runs) == ["AOF appendfsync everysec", "without AOF"]
    for rows in runs.values():
        assert [row["stage"] for row in rows] == ["producer", "router", "detector", "aggregator"]
        by_stage = {row["stage"]: row for row in rows}
        assert by_stage["producer"]["commands"]["xadd"]["calls"] == 2000
        for stage in ("router", "detector", "aggregator"):
            row = by_stage[stage]
            assert row["redis_us_per_click"] > 0 and row["commands"]["fcall"]["calls"] > 0
            assert 0 <= row["lua_overhead_us_per_click"] <= row["fcall_us_per_click"]


def _record_cluster_ports(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every port the bench's local clusters are given, as it picks them."""
    ports: list[int] = []

    def recorded(count: int) -> list[int]:
        ports.extend(free_ports(count))
        return ports[-count:]
    monkeypatch.setattr(local_cluster, "free_ports", recorded)
    return ports


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_bench_on_a_cluster_of_its_own_beside_one_server(bench_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--cluster 3``: a run on a fresh 3-master cluster, then one on one fresh server; each
    shard's Redis CPU per click, share and memory, what it serves, the cluster's total against one
    server's; and every node stopped afterwards."""
    assert main(["bench", "--cluster", "3", "--clicks", "3000", "--detectors", "1", "--json"]) == 0
    document = orjson.loads(capsys.readouterr().out)
    assert (document["shards"], document["replicas"], document["repeat"]) == (3, 0, 1)
    assert [run["design"] for run in document["runs"]] == ["cluster", "one server"]
    cluster, one = (run["report"] for run in document["runs"])
    for report in (one, cluster):
        assert report["finished"]["router"] == 3000 and report["persistence"] == "AOF appendfsync everysec"
    assert len(one["redis_shards"]) == 1
    shards = cluster["redis_shards"]
    assert len(shards) == 3 and abs(sum(row["share_pct"] for row in shards.values()) - 100) < 0.5, shards
    assert all(row["memory_bytes"] > 0 and row["cpu_us_per_click"] > 0 for row in shards.values()), shards
    # 3/3/2 partitions, and clicks:raw on a master with 2.
    holds = sorted(row["holds"] for row in shards.values())
    assert [h.split()[0] for h in holds] == ["2", "3", "3"] and holds[0].endswith(" + clicks:raw"), holds
    summary = document["summary"]
    assert summary["cluster_over_one_server_redis_cpu"] == pytest.approx(
        cluster["cpu_us_per_click"]["redis"] / one["cpu_us_per_click"]["redis"], abs=0.001)
    assert summary["largest_shard_share_pct"] == max(row["share_pct"] for row in shards.values())
    assert not any(_listening(int(node.rsplit(":", 1)[1])) for node in shards), "a cluster node still runs"


def test_a_failing_cluster_bench_stops_every_node(bench_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that cannot finish in a millisecond fails for certain, after the cluster (run first) started."""
    ports = _record_cluster_ports(monkeypatch)
    with pytest.raises(TimeoutError, match="did not finish in time"):
        main(["bench", "--cluster", "3", "--replicas", "1", "--clicks", "2000", "--timeout", "0.001"])
    assert len(ports) == 12  # 6 nodes, a port and a bus port each
    assert not any(_listening(port) for port in ports), "a cluster node still runs"


@pytest.mark.parametrize(("argv", "says"), [
    (["--cluster", "2"], "--cluster 2: Redis Cluster needs at least 3 masters"),
    (["--cluster", "3", "--use-running"], "drop --use-running"),
    (["--replicas", "1"], "--replicas and --failover-drill are a cluster's: they need --cluster"),
])
def test_cluster_bench_options(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", *argv]) == 2
    assert says in capsys.readouterr().err


def test_failover_drill_measures_what_a_master_kill_lost(bench_home: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The drill's figures are measurements (what the replication lag lets a crash lose varies by
    run): asserted is only that each run killed its master, the replica took over, the pipeline
    drained and every figure was counted; and every node stopped afterwards."""
    ports = _record_cluster_ports(monkeypatch)
    assert main(["bench", "--cluster", "3", "--replicas", "1", "--failover-drill", "--clicks", "2000", "--json"]) == 0
    runs = orjson.loads(capsys.readouterr().out)
    assert [run["victim"] for run in runs] == ["raw master", "partitions master"]
    for run in runs:
        assert run["drained"] and run["failover_s"] > 0, run
        assert run["acknowledged"] == 2000 and 0 <= run["acknowledged_lost"] <= run["acknowledged"], run
        assert 0 < run["clicks_on_raw"] <= run["raw_entries"], run
        assert run["clicks_without_outcome"] >= 0 and run["clicks_with_several_outcomes"] >= 0, run
    assert len(ports) == 24 and not any(_listening(port) for port in ports), "a cluster node still runs"


def test_failover_drill_needs_a_replica(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--cluster", "3", "--failover-drill"]) == 2
    assert "needs --replicas 1" in capsys.readouterr().err
