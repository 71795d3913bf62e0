"""What the bench reads from the Redis it measures (each master's, on a cluster): CPU, memory,
persistence and its AOF rewrites; and the clearing of its namespace before a run."""

from __future__ import annotations

from pipeline.client.cluster import ClusterClient, every_master
from pipeline.client.resp import RespClient


async def clear_namespace(client: RespClient | ClusterClient, namespace: str) -> None:
    """Remove every key of `namespace` (each master's, on a cluster): what a previous run left there
    (device windows, leases, series) would make the same seeded clicks duplicates and skew the counts."""
    pattern = "".join("\\" + c if c in "*?[]\\" else c for c in namespace) + ":*"
    for node in every_master(client):
        cursor = b"0"
        while True:
            cursor, found = await node.execute("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            if found:
                await node.pipeline([("UNLINK", key) for key in found])
            if cursor == b"0":
                break


async def info_fields(client: RespClient | ClusterClient, section: str) -> dict[str, str]:
    info = (await client.execute("INFO", section)).decode()
    return dict(line.split(":", 1) for line in info.splitlines() if ":" in line)


async def redis_cpu_s(client: RespClient | ClusterClient) -> dict[str, float]:
    """Each master's Redis CPU seconds so far (one server: itself), by ``host:port``: on a cluster
    a keyless ``INFO`` reaches one master only, so each is asked in turn."""
    used = {}
    for node in every_master(client):
        fields = await info_fields(node, "cpu")
        used[f"{node.host}:{node.port}"] = float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])
    return used


async def aof_rewrites(client: RespClient | ClusterClient) -> int:
    """The AOF rewrites every master has made so far: each forks a child whose CPU, on the same cores,
    is in no process's figure here, and whose compressing of the dataset can delay clicks."""
    return sum([int((await info_fields(node, "persistence")).get("aof_rewrites", 0)) for node in every_master(client)])


async def redis_memory_bytes(client: RespClient | ClusterClient) -> dict[str, int]:
    """Each master's peak allocated memory (``MEMORY STATS``), by ``host:port``."""
    return {f"{node.host}:{node.port}": int((await node.execute("MEMORY", "STATS"))[1])
            for node in every_master(client)}


async def persistence_of(client: RespClient) -> str:
    aof = (await client.execute("CONFIG", "GET", "appendonly"))[1] == b"yes"
    fsync = (await client.execute("CONFIG", "GET", "appendfsync"))[1].decode()
    return f"AOF appendfsync {fsync}" if aof else "without AOF"
