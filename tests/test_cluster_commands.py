"""Every ``fraud`` command on the shared 3-master cluster, pointed at a master that does NOT hold
``clicks:raw`` (so that each command's keys must be routed to their own nodes to work)."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import redis
from redis.cluster import RedisCluster

from agents.generator import blacklisted_ips
from agents.pipeline import PIPELINE
from pipeline.cli.main import main
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.dev.cluster import LocalCluster
from tests.accounting import check_exactly_once
from tests.conftest import PROJECT_ROOT
from tests.helpers import xadd_all
from tests.outputs import group_state, open_client, pipeline_drained
from tests.partition_audit import labelled_trace
from tests.procs import stop_all, wait_until
from tests.test_backtest import MAPPING

CLICKS = 2_000
LISTED = ("192.0.2.1", "198.51.100.7", "203.0.113.9")


@pytest.fixture
def elsewhere(cluster: LocalCluster, cluster_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The flushed cluster, reached through a master that serves neither clicks:raw nor the other
    unpartitioned keys; the ``fraud`` commands run in the test (``main``) see it in FRAUD_*."""
    with RedisCluster.from_url(cluster.urls[0]) as admin:
        raw_port = admin.get_node_from_key(Keys(cluster_settings.namespace).raw).port
    url = next(u for u in cluster.urls if not u.endswith(f":{raw_port}"))
    settings = dataclasses.replace(cluster_settings, redis_url=url)
    monkeypatch.setenv("FRAUD_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("FRAUD_HOME", str(settings.home))
    return settings


def fraud(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run one command in this process; fails on a non-zero exit; returns its own output lines
    (the agents' log lines, which start with a date, left out)."""
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    assert code == 0, (argv, captured.err[-2000:])
    return "\n".join(line for line in captured.out.splitlines() if not line[:4].isdigit())


def run_pipeline(capsys: pytest.CaptureFixture[str]) -> None:
    """Every stage as ``fraud agent <stage> --burst``, in flow order."""
    for stage in PIPELINE:
        fraud(capsys, "agent", stage.name, "--burst", "--consumer", f"{stage.name}-1")


def blacklist_copies(settings: Settings) -> list[set[bytes]]:
    """The record's members, then each partition's copy's."""
    keys = Keys(settings.namespace)
    with open_client(settings.redis_url) as client:
        return [client.smembers(keys.blacklist_members)] + [
            client.smembers(part.blacklist_members) for part in keys.partitions(settings.partitions)]


def test_blacklist_commands_keep_every_partitions_copy_in_step(elsewhere: Settings, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert fraud(capsys, "blacklist", "add", *LISTED[:2]) == "added 2 address(es), 0 already listed"
    listing = tmp_path / "ips.txt"
    listing.write_text(f"# more\n{LISTED[1]}\n{LISTED[2]}\n")
    assert fraud(capsys, "blacklist", "load", str(listing)) == "added 1 address(es), 1 already listed"
    assert {len(c) for c in blacklist_copies(elsewhere)} == {3}
    assert fraud(capsys, "blacklist", "remove", LISTED[0], "192.0.2.200") == \
        "removed 1 address(es), 1 were not listed"
    copies = blacklist_copies(elsewhere)
    assert all(c == {ip.encode() for ip in LISTED[1:]} for c in copies), copies
    assert fraud(capsys, "blacklist", "check", LISTED[0], LISTED[2]).splitlines() == [
        f"{LISTED[0]} not listed", f"{LISTED[2]} listed"]


def test_generate_replay_and_agents_give_every_click_one_outcome(elsewhere: Settings, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """``fraud generate`` then ``fraud replay FILE`` then each ``fraud agent <stage> --burst``: every
    click has exactly one outcome; then ``fraud replay --from-stream`` re-judges the range aside
    with the same outcomes, and ``fraud replay --drop`` leaves no key of it on any node."""
    # The generator's blacklisted addresses: the replay aside must see its snapshot of the list.
    fraud(capsys, "blacklist", "add", *blacklisted_ips())
    trace = tmp_path / "trace.jsonl"
    fraud(capsys, "generate", "--out", str(trace), "--clicks", str(CLICKS), "--seed", "5")
    fraud(capsys, "replay", str(trace))
    run_pipeline(capsys)
    outcomes = check_exactly_once(elsewhere)
    assert len(outcomes.raw) == CLICKS and len(outcomes.verdicts) > CLICKS // 2
    assert outcomes.verdict_counts()["ip_blacklist"] > 0

    report = fraud(capsys, "replay", "--from-stream", "--name", "again")
    assert re.search(rf"^replay 'again': {CLICKS} clicks ", report, re.MULTILINE), report
    assert f"changed: 0 of {CLICKS}" in report, report
    aside = Keys(elsewhere.namespace).replay("again").namespace
    assert replay_keys(elsewhere, aside) > 0
    dropped = fraud(capsys, "replay", "--drop", "--name", "again")
    assert re.fullmatch(r"dropped replay 'again': [1-9]\d* keys", dropped), dropped
    assert replay_keys(elsewhere, aside) == 0


def replay_keys(settings: Settings, namespace: str) -> int:
    """Keys of a replay's key space on every master."""
    with RedisCluster.from_url(settings.redis_url) as client:
        return sum(len(client.keys(f"{namespace}:*", target_nodes=node)) for node in client.get_primaries())


def test_group_reset_moves_every_partitions_group(elsewhere: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    settings = elsewhere
    xadd_all(settings, labelled_trace(seed=21, count=CLICKS))
    run_pipeline(capsys)
    verdicts = len(check_exactly_once(settings).verdicts)
    keys = Keys(settings.namespace)
    parts = keys.partitions(settings.partitions)
    with open_client(settings.redis_url) as client:
        assert all(group_state(client, p.input, "detector") == (0, 0) for p in parts)
        dead_letters = sum(client.xlen(p.dead) for p in parts)
        fraud(capsys, "group", "reset", "--stage", "detector", "--to-earliest", "--execute")
        lags = [group_state(client, p.input, "detector") for p in parts]
        assert all(lag == (client.xlen(p.input), 0) for lag, p in zip(lags, parts, strict=True)), lags
        fraud(capsys, "group", "reset", "--stage", "detector", "--partition", "3", "--to-latest", "--execute")
        assert group_state(client, parts[3].input, "detector") == (0, 0)
        assert group_state(client, parts[2].input, "detector") == lags[2]
        fraud(capsys, "group", "reset", "--stage", "router", "--to-earliest", "--execute")
        assert group_state(client, keys.raw, "router") == (CLICKS, 0)
        # Delivered again: the router copies nothing twice, the detector's windows know every
        # click and its record of dead letters every malformed one: still one outcome each.
        run_pipeline(capsys)
        assert pipeline_drained(client, settings)
        assert sum(client.xlen(p.verdicts) for p in parts) == verdicts
        assert sum(client.xlen(p.dead) for p in parts) == dead_letters


def test_backtest_on_a_cluster(elsewhere: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "sample.csv.gz"
    fraud(capsys, "generate", "--layout", "talkingdata", "--out", str(log), "--clicks", str(CLICKS), "--seed", "3")
    mapping = tmp_path / "talkingdata.toml"
    mapping.write_text(MAPPING)
    report = orjson.loads(fraud(capsys, "backtest", str(log), "--mapping", str(mapping), "--json").splitlines()[-1])
    judged = sum(cells["fraud"] + cells["not_fraud"] for outcome, cells in report["outcomes"].items()
                 if outcome != "none")
    assert report["sent"] == CLICKS and judged == CLICKS, report
    # Dropped afterwards, on every node.
    assert replay_keys(elsewhere, Keys(elsewhere.namespace).replay("backtest").namespace) == 0


def test_generator_and_monitor_agents(elsewhere: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    fraud(capsys, "agent", "generator", "--rate", "0", "--total", "500", "--seed", "4")
    run_pipeline(capsys)
    check_exactly_once(elsewhere, retries_may_expire=True)
    fraud(capsys, "agent", "monitor", "--interval", "0.05", "--once")
    keys = Keys(elsewhere.namespace)
    with open_client(elsewhere.redis_url) as client:
        assert client.xlen(keys.raw) == 500
        dead = sum(client.xlen(part.dead) for part in keys.partitions(elsewhere.partitions))
        # The monitor's samples, each series in its own slot, read every partition on its node.
        for stage in ("router", "detector", "aggregator"):
            assert float(client.execute_command("TS.GET", keys.health_series("lag", stage))[1]) == 0
        assert float(client.execute_command("TS.GET", keys.health_series("dead_letters", "dead"))[1]) == dead


def test_soak_on_the_running_cluster(elsewhere: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    summary = orjson.loads(fraud(capsys, "soak", "--use-running", "--clicks", "3000", "--rate", "0",
                                 "--json").splitlines()[-1])
    assert summary["clicks"] == 3000, summary
    # Memory is the cluster's: every master's used_memory added up.
    with RedisCluster.from_url(elsewhere.redis_url) as client:
        masters = sum(int(client.info("memory", target_nodes=node)["used_memory"])
                      for node in client.get_primaries())
    assert summary["memory_end_bytes"] > masters // 2, (summary, masters)


def test_up_runs_the_pipeline_until_ctrl_c(elsewhere: Settings) -> None:
    """``fraud up`` pointed at the node: every click sent gets its outcome; Ctrl+C ends it cleanly."""
    env = dict(os.environ, FRAUD_REDIS_URL=elsewhere.redis_url, FRAUD_HOME=str(elsewhere.home))
    up = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "up", "--refresh", "0.5"], env=env, cwd=PROJECT_ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        xadd_all(elsewhere, labelled_trace(seed=22, count=CLICKS))
        with open_client(elsewhere.redis_url) as client:
            # The clicks are all on clicks:raw: drained means routed, judged and counted.
            wait_until(lambda: pipeline_drained(client, elsewhere), 60, "every click judged under fraud up")
        up.send_signal(signal.SIGINT)
        out, err = up.communicate(timeout=60)
    finally:
        stop_all([up])
    assert up.returncode == 0, err[-2000:]
    assert "lag" in out
    check_exactly_once(elsewhere)


def test_acl_apply_sets_the_users_on_every_node(elsewhere: Settings, cluster: LocalCluster,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """ACL users are each node's own: ``fraud acl --apply`` sets them on every node (the default
    user is left as it is, so the other tests go on; the user is deleted after)."""
    monkeypatch.setenv("FRAUD_DASHBOARD_PASSWORD", "a-test-password")
    try:
        assert "dashboard: set" in fraud(capsys, "acl", "--apply").splitlines()
        for url in cluster.urls:
            with redis.Redis.from_url(url) as node:
                assert node.acl_getuser("dashboard") is not None, url
                assert node.acl_whoami() == "default"
    finally:
        for url in cluster.urls:
            with redis.Redis.from_url(url) as node:
                node.acl_deluser("dashboard")
