"""The embedded server ``fraud server`` runs: the one FRAUD_REDIS_URL names, protected by default.

ACLs on and the default user off; one user per role (``pipeline/ops/acl.py``) with passwords made
on first start (``pipeline/dev/credentials.py``); with a ``rediss://`` URL, TLS only, with a local
CA. The ACL file is written again at every start, so the rules follow the installed version.
"""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlsplit

from pipeline.core.keys import Keys
from pipeline.core.log import redact_url
from pipeline.core.settings import Settings
from pipeline.dev.certificates import ensure_certificates
from pipeline.dev.credentials import DEFAULT_PORT, credentials_file, ensure_credentials, read_credentials, tls_folder
from pipeline.dev.server import EmbeddedRedis
from pipeline.dev.stack import ServerError
from pipeline.ops.acl import ADMIN, acl_file


def server_for(settings: Settings, create: bool = False) -> EmbeddedRedis:
    """The embedded server that ``settings.redis_url`` points at; only a local one will do.
    ``create`` makes its credentials, ACL file and certificates when missing (``fraud server start``)."""
    parts = urlsplit(settings.redis_url)
    if parts.scheme not in ("redis", "rediss"):
        raise ServerError(f"the embedded server speaks redis:// or rediss://, not {parts.scheme or 'no'} scheme")
    host = parts.hostname or "127.0.0.1"
    if not _is_local(host):
        raise ServerError(f"the embedded server only serves this machine: {host} in FRAUD_REDIS_URL "
                          "is not a local address")
    if parts.password or parts.username or "password=" in parts.query:
        raise ServerError("the embedded server makes its own per-role credentials (under FRAUD_HOME): "
                          "drop them from FRAUD_REDIS_URL")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ServerError(f"bad port in FRAUD_REDIS_URL {redact_url(settings.redis_url)!r}") from None
    bind = "127.0.0.1" if host == "localhost" else host
    secrets_path = credentials_file(settings.home, port)
    passwords = ensure_credentials(secrets_path) if create else read_credentials(secrets_path) or {}
    tls = ensure_certificates(tls_folder(settings.home)) if parts.scheme == "rediss" else None
    aclfile = secrets_path.with_name("users.acl")
    if create:
        fd = os.open(aclfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(acl_file(Keys(settings.namespace), passwords))
    login = (ADMIN, passwords[ADMIN]) if ADMIN in passwords else None
    return EmbeddedRedis(settings.home, port, appendfsync=settings.appendfsync, host=bind,
                         aclfile=aclfile if passwords else None, login=login, tls=tls)


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
