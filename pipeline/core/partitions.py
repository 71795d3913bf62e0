"""Which partition a click belongs to: a function of its ``device_id`` alone.

CRC-32 (IEEE 802.3, the one of zlib, gzip and PNG; ``crc32`` in nearly every language's standard
library) of the ``device_id`` value's bytes as sent, modulo the number of partitions. An entry
without a ``device_id`` goes to partition ``crc32(b"") % P`` = 0, where the detector dead-letters
it. A producer that writes into partitions itself must compute exactly this (README: test vectors).
"""

from __future__ import annotations

import zlib


def partition_of(device_id: bytes | str, partitions: int) -> int:
    if isinstance(device_id, str):
        device_id = device_id.encode()
    return zlib.crc32(device_id) % partitions


def device_field(flat: list[bytes] | None) -> bytes:
    """The first ``device_id`` value of a flat field/value list, b"" when there is none."""
    if not flat:
        return b""
    # Nearly always the first name: list.index finds it at C speed; a value spelled
    # "device_id" (an odd position) is skipped by the slow path.
    try:
        at = flat.index(b"device_id")
    except ValueError:
        return b""
    if at % 2 == 0 and at + 1 < len(flat):
        return flat[at + 1]
    for at in range(0, len(flat) - 1, 2):
        if flat[at] == b"device_id":
            return flat[at + 1]
    return b""
