"""The embedded server's per-role passwords, made on its first start and kept in
``<home>/redis-<port>/credentials.json`` (readable by the owner only), and the one place that
hands a command the credentials (and TLS files) of its role when FRAUD_REDIS_URL carries none.

Nobody types a password for the local server: ``fraud agent detector`` logs in as ``detector``,
``fraud blacklist`` as ``operator``, and so on. A URL with its own credentials is used as it is.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

from pipeline.core.settings import Settings
from pipeline.dev.certificates import TlsFiles
from pipeline.ops.acl import ADMIN, ROLES

DEFAULT_PORT = 6379
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")

# The role each command acts as; an agent acts as its stage (the generator as a producer).
# ``fraud server`` makes the credentials and uses the admin's itself.
COMMAND_ROLES: dict[str, str | None] = {"server": None, "setup": ADMIN, "acl": ADMIN, "up": ADMIN, "status": "monitor",
                 "offenders": "monitor",
                 "blacklist": "operator", "replay": "operator", "group": "operator", "generate": "producer",
                 "bench": ADMIN, "soak": ADMIN, "cluster": ADMIN}
AGENT_ROLES = {"generator": "producer"}


def command_role(command: str, stage: str | None = None) -> str | None:
    if command == "agent" and stage:
        return AGENT_ROLES.get(stage, stage)
    return COMMAND_ROLES.get(command, "operator")


def credentials_file(home: Path, port: int) -> Path:
    return Path(home) / f"redis-{port}" / "credentials.json"


def tls_folder(home: Path) -> Path:
    return Path(home) / "tls"


def ensure_credentials(path: Path) -> dict[str, str]:
    """Every role's password, made once: the file is created readable by its owner only."""
    existing = read_credentials(path)
    if existing is not None and set(existing) >= set(ROLES):
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    passwords = {role: secrets.token_urlsafe(24) for role in ROLES}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(passwords, out, indent=1)
    path.chmod(0o600)
    return passwords


def read_credentials(path: Path) -> dict[str, str] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, PermissionError, ValueError):
        return None


def with_role(settings: Settings, role: str | None) -> Settings:
    """``settings`` with the local embedded server's credentials and TLS files for ``role`` filled
    in, when FRAUD_REDIS_URL names a local server of this home and carries no credentials."""
    parts = urlsplit(settings.redis_url)
    query = parse_qs(parts.query)
    if role is None or parts.hostname not in LOCAL_HOSTS or parts.username or parts.password or "password" in query:
        return settings
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        return settings
    passwords = read_credentials(credentials_file(settings.home, port))
    if not passwords or role not in passwords:
        return settings
    netloc = f"{quote(role, safe='')}:{quote(passwords[role], safe='')}@{parts.netloc}"
    changed = replace(settings, redis_url=urlunsplit(parts._replace(netloc=netloc)))
    tls = TlsFiles(tls_folder(settings.home))
    if parts.scheme == "rediss" and not settings.tls_ca_file and tls.exist():
        changed = replace(changed, tls_ca_file=str(tls.ca), tls_cert_file=str(tls.client_cert),
                          tls_key_file=str(tls.client_key))
    return changed
