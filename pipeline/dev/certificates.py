"""A local certificate authority and the embedded server's and clients' certificates, made with
the ``openssl`` command on first use and kept under ``<home>/tls``, readable by the owner only.

The server's certificate names ``localhost``, ``127.0.0.1`` and ``::1``, so clients keep checking
the host name; the client certificate is what the server asks every client for.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pipeline.dev.stack import ServerError

DAYS = "825"
SERVER_NAMES = "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"


@dataclass(frozen=True)
class TlsFiles:
    """Where the CA, the server's and a client's certificates and keys are."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.folder / "client.crt"

    @property
    def client_key(self) -> Path:
        return self.folder / "client.key"

    def exist(self) -> bool:
        return all(p.is_file() for p in (self.ca, self.server_cert, self.server_key, self.client_cert,
                                         self.client_key))


def ensure_certificates(folder: Path) -> TlsFiles:
    """The files in ``folder``, made once (a new CA each time any is missing)."""
    files = TlsFiles(Path(folder).resolve())
    if files.exist():
        return files
    files.folder.mkdir(parents=True, exist_ok=True)
    files.folder.chmod(0o700)
    ca_key = files.folder / "ca.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", ca_key, "-out", files.ca, "-days", DAYS, "-subj", "/CN=fraud-pipeline local CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _issue(files, ca_key, files.server_cert, files.server_key, "localhost", f"{SERVER_NAMES}\n"
           "extendedKeyUsage=serverAuth\n")
    _issue(files, ca_key, files.client_cert, files.client_key, "fraud-client", "extendedKeyUsage=clientAuth\n")
    for path in files.folder.iterdir():
        path.chmod(0o600)
    return files


def _issue(files: TlsFiles, ca_key: Path, cert: Path, key: Path, name: str, extensions: str) -> None:
    request = cert.with_suffix(".csr")
    ext_file = cert.with_suffix(".ext")
    ext_file.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n" + extensions)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key,
             "-out", request, "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", request, "-CA", files.ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
             "-days", DAYS, "-extfile", ext_file)
    request.unlink()
    ext_file.unlink()


def _openssl(*args: str | Path) -> None:
    program = shutil.which("openssl")
    if program is None:
        raise ServerError("TLS for the embedded server needs the openssl command (Debian: apt-get install openssl)")
    # Keys are created readable by the owner only, from the first byte.
    old_mask = os.umask(0o077)
    try:
        done = subprocess.run([program, *map(str, args)], capture_output=True, text=True, check=False,
                              stdin=subprocess.DEVNULL)
    finally:
        os.umask(old_mask)
    if done.returncode != 0:
        raise ServerError(f"openssl {args[0]} failed: {done.stderr.strip()[-300:]}")
