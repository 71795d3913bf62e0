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

from pipeline.cli.acl import password_variable
from pipeline.cli.main import build_parser
from pipeline.dev.credentials import command_role
from pipeline.ops.acl import ROLES

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
# One-off set-up steps run the app image too, but are not agents.
ONE_OFF = ("acl", "setup")
AGENTS = sorted(name for name, service in SERVICES.items() if "build" in service and name not in ONE_OFF)
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
    check = " ".join(redis["healthcheck"]["test"])
    assert "redis-cli" in check and "ping" in check
    named = [v.split(":")[0] for v in redis["volumes"] if v.endswith(":/data")]
    assert named and named[0] in COMPOSE["volumes"], "redis needs a named volume at /data"


@pytest.mark.parametrize("name", AGENTS)
def test_agents_wait_for_a_healthy_redis_and_can_scale(name: str) -> None:
    service = SERVICES[name]
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    # The function library is the admin's to load, before any agent starts.
    assert service["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    assert service["environment"]["FRAUD_REDIS_URL"] == role_url(command_role(*service["command"][:2]))
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


def role_url(role: str | None) -> str:
    """The URL a service of this role logs in with: its own user, its password from the environment."""
    assert role in ROLES
    variable = password_variable(role)
    return f"redis://{role}:${{{variable}:?set {variable}, see README Security}}@redis:6379"


def test_redis_runs_the_acl_file_of_fraud_acl_and_is_local_only() -> None:
    redis, acl = SERVICES["redis"], SERVICES["acl"]
    command = redis["command"]
    aclfile = command[command.index("--aclfile") + 1]
    assert acl["command"] == ["acl", "--file", aclfile]
    assert build_parser().parse_args(acl["command"]).file == aclfile
    assert redis["depends_on"]["acl"]["condition"] == "service_completed_successfully"
    # Every role's password comes from the environment, none is written in the file.
    assert set(acl["environment"]) == {password_variable(role) for role in ROLES}
    assert all(value.startswith("${") for value in acl["environment"].values())
    assert all(port.startswith("127.0.0.1:") for name in SERVICES for port in SERVICES[name].get("ports", []))


def test_setup_runs_as_admin_after_redis() -> None:
    setup = SERVICES["setup"]
    assert build_parser().parse_args(setup["command"]).command == "setup"
    assert setup["environment"]["FRAUD_REDIS_URL"] == role_url("admin")
    assert setup["depends_on"]["redis"]["condition"] == "service_healthy"


def test_grafana_needs_a_login_and_is_local_only() -> None:
    env = SERVICES["grafana"]["environment"]
    plugin = env["GF_PLUGINS_PREINSTALL_SYNC"].split("@")[0]
    assert plugin == DATASOURCE["datasources"][0]["type"] == "redis-datasource"
    # GF_PLUGINS_PREINSTALL_SYNC exists from Grafana 12.1 on; older ones need GF_INSTALL_PLUGINS.
    major, minor = (int(p) for p in SERVICES["grafana"]["image"].split(":")[1].split(".")[:2])
    assert (major, minor) >= (12, 1)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in env
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert SERVICES["grafana"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert SERVICES["grafana"]["ports"] == ["127.0.0.1:3000:3000"]


def test_the_datasource_points_at_the_compose_redis() -> None:
    source = DATASOURCE["datasources"][0]
    host = source["url"].split("//")[1].split(":")[0]
    assert host == "redis" and host in SERVICES
    # The read-only dashboard user, its password from Grafana's environment (provisioning interpolates it).
    assert source["jsonData"]["acl"] is True and source["jsonData"]["user"] == "dashboard"
    assert source["secureJsonData"]["password"] == "$" + password_variable("dashboard")
    assert password_variable("dashboard") in SERVICES["grafana"]["environment"]


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
