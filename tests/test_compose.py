"""compose.yaml and the Dockerfile: pinned images, a healthy Redis first, scalable agents, real commands.

No Docker engine runs here, so these check the files' structure and that every
command a container runs is one the ``fraud`` CLI actually accepts.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
AGENTS = sorted(name for name, service in SERVICES.items() if "build" in service)
# major.minor.patch at least: a tag that names one release, not a moving line.
EXACT_TAG = re.compile(r"^[a-z0-9./_-]+:\d+\.\d+\.\d+[A-Za-z0-9._-]*$")
DATASOURCE = yaml.safe_load((ROOT / "grafana/provisioning/datasources/redis.yaml").read_text())
DASHBOARD_PROVIDER = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/fraud.yaml").read_text())


def agent_stages() -> set[str]:
    """The stages ``fraud agent`` knows, read from the real parser."""
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    agent = commands.choices["agent"]
    stages = next(a for a in agent._actions if a.dest == "stage")
    return set(stages.choices)


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of each bind mount in short syntax."""
    out = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out.append((source, target))
    return out


def test_every_image_is_pinned_to_an_exact_version() -> None:
    images = {name: s["image"] for name, s in SERVICES.items() if "image" in s}
    assert {"redis", "grafana"} <= set(images)
    for name, image in images.items():
        assert "latest" not in image, f"{name}: {image}"
        assert EXACT_TAG.match(image), f"{name}: {image} is not pinned to an exact version"


def test_redis_is_persistent_and_has_a_healthcheck() -> None:
    redis = SERVICES["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    assert "redis-cli" in redis["healthcheck"]["test"] and "ping" in redis["healthcheck"]["test"]
    named = [v.split(":")[0] for v in redis["volumes"] if v.endswith(":/data")]
    assert named and named[0] in COMPOSE["volumes"], "redis needs a named volume at /data"


@pytest.mark.parametrize("name", AGENTS)
def test_agents_wait_for_a_healthy_redis_and_can_scale(name: str) -> None:
    service = SERVICES[name]
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert service["environment"]["FRAUD_REDIS_URL"] == "redis://redis:6379"
    # A fixed name or host port would make `--scale` fail on the second replica;
    # a fixed consumer name would make replicas steal each other's entries.
    assert "container_name" not in service
    assert "ports" not in service
    assert "FRAUD_CONSUMER" not in service["environment"]
    assert service["restart"] == "unless-stopped"
    grace = service["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) >= 15


def test_the_agents_are_the_pipeline_and_the_generator_is_demo_only() -> None:
    assert {"detector", "aggregator", "monitor", "generator"} <= set(AGENTS)
    assert SERVICES["generator"]["profiles"] == ["demo"]
    assert all("profiles" not in SERVICES[name] for name in ("detector", "aggregator", "monitor"))


@pytest.mark.parametrize("name", AGENTS)
def test_every_service_command_is_a_real_cli_command(name: str) -> None:
    command = SERVICES[name]["command"]
    assert command[0] == "agent"
    assert command[1] in agent_stages(), f"compose service {name!r} runs `fraud agent {command[1]}`, not in the CLI"
    args = build_parser().parse_args(command)
    assert args.command == "agent" and args.stage == command[1]
    assert callable(args.run)


def test_a_wrong_command_would_be_caught() -> None:
    # The check above is only worth something if the parser rejects what it does not know.
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["agent", "no-such-stage"])
    assert exit_info.value.code == 2


def test_grafana_mounts_provisioning_and_dashboards_that_exist() -> None:
    grafana = SERVICES["grafana"]
    mounts = dict(bind_mounts(grafana))
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    # The file provider reads the folder that compose mounts the dashboards into.
    assert mounts["./grafana/dashboards"] == DASHBOARD_PROVIDER["providers"][0]["options"]["path"]
    for volume in grafana["volumes"]:
        if volume.startswith("./grafana/"):
            assert volume.endswith(":ro"), f"{volume} should be read-only"
    for name, service in SERVICES.items():
        for source, _ in bind_mounts(service):
            assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "grafana/dashboards" / Path(home).name).is_file()


def test_grafana_installs_the_plugin_and_lets_viewers_in() -> None:
    env = SERVICES["grafana"]["environment"]
    plugin = env["GF_PLUGINS_PREINSTALL_SYNC"].split("@")[0]
    assert plugin == DATASOURCE["datasources"][0]["type"] == "redis-datasource"
    # GF_PLUGINS_PREINSTALL_SYNC exists from Grafana 12.1 on; older ones need GF_INSTALL_PLUGINS.
    major, minor = (int(p) for p in SERVICES["grafana"]["image"].split(":")[1].split(".")[:2])
    assert (major, minor) >= (12, 1)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert SERVICES["grafana"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "3000:3000" in SERVICES["grafana"]["ports"]


def test_the_datasource_points_at_the_compose_redis() -> None:
    source = DATASOURCE["datasources"][0]
    assert source["url"] == SERVICES["detector"]["environment"]["FRAUD_REDIS_URL"]
    host = source["url"].split("//")[1].split(":")[0]
    assert host in SERVICES


def test_dockerfile_runs_the_fraud_console_script() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    assert lines[next(i for i, line in enumerate(lines) if line.startswith("FROM"))] == "FROM python:3.11-slim"
    entrypoint = next(line for line in lines if line.startswith("ENTRYPOINT"))
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT")) == ["fraud"]
    installs = [line for line in lines if "pip install" in line]
    assert installs and all("[" not in line for line in installs), "the image installs no extras"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module_name, function = scripts["fraud"].split(":")
    module = __import__(module_name, fromlist=[function])
    assert callable(getattr(module, function))


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".fraud", ".git"} <= ignored
    assert "**/__pycache__" in ignored
