"""Opening Redis connections, with the checks every command needs first."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, AuthorizationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from pipeline.client.cluster import ClusterClient, is_cluster_node, open_cluster_client
from pipeline.client.resp import RespAuthError, RespClient, RespConnectionError, RespError, is_server_state_error
from pipeline.core.errors import MissingModulesError, RedisUnavailableError
from pipeline.core.log import redact_url
from pipeline.core.replies import pairs
from pipeline.core.settings import Settings

T = TypeVar("T")
MAX_WAIT_S = 5.0

# Module name as MODULE LIST reports it, and what a user would call it.
REQUIRED_MODULES: dict[str, str] = {"bf": "RedisBloom", "timeseries": "RedisTimeSeries"}


def missing_modules(module_list: Iterable[Any]) -> list[str]:
    """Names of the required modules absent from a MODULE LIST reply (RESP2 or RESP3 shape)."""
    loaded: set[str] = set()
    for module in module_list:
        if isinstance(module, dict):
            name = module.get(b"name", module.get("name"))
        else:
            named = pairs(module)
            name = named.get(b"name", named.get("name"))
        if isinstance(name, bytes):
            name = name.decode()
        if name:
            loaded.add(name)
    return [label for name, label in REQUIRED_MODULES.items() if name not in loaded]


def _missing_error(url: str, missing: list[str]) -> MissingModulesError:
    return MissingModulesError(
        f"Redis at {redact_url(url)} lacks the {' and '.join(missing)} module"
        f"{'s' if len(missing) > 1 else ''}: use Redis Stack or Redis 8 (or run `fraud server start`)"
    )


def tls_context(settings: Settings) -> ssl.SSLContext:
    """Verifies the server's certificate and host name against FRAUD_TLS_CA_FILE (else the system's
    CAs), and shows FRAUD_TLS_CERT_FILE/KEY_FILE when the server asks for a client certificate."""
    context = ssl.create_default_context(cafile=settings.tls_ca_file or None)
    if settings.tls_cert_file:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


def redis_py_tls(settings: Settings) -> dict[str, Any]:
    """The same TLS settings as redis-py's connection options (ignored by it for redis://)."""
    options: dict[str, Any] = {}
    if settings.tls_ca_file:
        options["ssl_ca_certs"] = settings.tls_ca_file
    if settings.tls_cert_file:
        options.update(ssl_certfile=settings.tls_cert_file, ssl_keyfile=settings.tls_key_file)
    return options


async def open_fast_client(settings: Settings) -> RespClient | ClusterClient:
    """The agents' hiredis client, connected and checked for the modules; on a node of a Redis
    Cluster, a client of the whole cluster (the same interface) seeded by that node."""
    tls = tls_context(settings) if settings.redis_url.startswith("rediss:") else None
    client = RespClient(settings.redis_url, ssl_context=tls)
    try:
        modules = await client.execute("MODULE", "LIST")
    except RespConnectionError as err:
        raise RedisUnavailableError(f"cannot reach Redis at {redact_url(settings.redis_url)}: {err}") from err
    except (RespAuthError, RespError) as err:
        await client.close()
        raise RedisUnavailableError(f"Redis at {redact_url(settings.redis_url)} refused MODULE LIST: {err}",
                                    transient=is_server_state_error(err)) from err
    missing = missing_modules(modules)
    if missing:
        await client.close()
        raise _missing_error(settings.redis_url, missing)
    try:
        if await is_cluster_node(client):
            return await open_cluster_client(client, settings.redis_url, tls)
    except RespConnectionError as err:
        raise RedisUnavailableError(f"cannot reach Redis at {redact_url(settings.redis_url)}: {err}") from err
    except RespError as err:
        await client.close()
        raise RedisUnavailableError(f"Redis at {redact_url(settings.redis_url)} refused HELLO or CLUSTER SLOTS: "
                                    f"{err}", transient=is_server_state_error(err)) from err
    return client


async def open_redis(settings: Settings, encoding_errors: str = "strict") -> aioredis.Redis:
    """A redis-py asyncio client for tools, connected and checked for the modules.

    Replies are decoded as UTF-8; ``encoding_errors`` is the codec's error handler for bytes that
    are not (``backslashreplace`` for tools that only show what they read).
    """
    tls = redis_py_tls(settings) if settings.redis_url.startswith("rediss:") else {}
    client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True, encoding_errors=encoding_errors,
                                     **tls)
    try:
        modules = await client.execute_command("MODULE", "LIST")
    except (RedisConnectionError, OSError) as err:
        await client.aclose()
        raise RedisUnavailableError(f"cannot reach Redis at {redact_url(settings.redis_url)}: {err}",
                                    transient=not isinstance(err, AuthenticationError | AuthorizationError)) from err
    except ResponseError as err:
        await client.aclose()
        raise RedisUnavailableError(f"Redis at {redact_url(settings.redis_url)} refused MODULE LIST: {err}",
                                    transient=False) from err
    missing = missing_modules(modules)
    if missing:
        await client.aclose()
        raise _missing_error(settings.redis_url, missing)
    if not await _redis_py_on_cluster(client):
        return client
    # A node of a Redis Cluster: a client of the whole cluster, so every key reaches its own node.
    await client.aclose()
    cluster = aioredis.RedisCluster.from_url(settings.redis_url, decode_responses=True,
                                             encoding_errors=encoding_errors, **tls)
    await cluster.initialize()
    return cluster  # type: ignore[return-value]


async def _redis_py_on_cluster(client: aioredis.Redis) -> bool:
    """Whether the server is a node of a Redis Cluster (HELLO's ``mode``: every user may ask)."""
    hello = await client.execute_command("HELLO")
    mode = hello.get("mode") if isinstance(hello, dict) else pairs(hello).get("mode")
    return bool(mode == "cluster")


async def open_patiently(opener: Callable[[], Awaitable[T]], events: Any) -> T:
    """``opener()``, tried again with back-off while Redis is away for a while (down, restarting,
    loading its data): an agent started before its Redis, or during a restart, waits for it
    instead of exiting. A refused password or a missing module fails at once."""
    delay = 0.0
    while True:
        try:
            return await opener()
        except RedisUnavailableError as err:
            if not err.transient:
                raise
            delay = min(MAX_WAIT_S, max(0.1, delay * 2))
            events.warning("waiting for redis", error=str(err), retry_in_s=delay)
            await asyncio.sleep(delay)
