"""Which partition a click belongs to: a function of its ``device_id`` alone.

CRC-32 (IEEE 802.3, the one of zlib, gzip and PNG; ``crc32`` in nearly every language's standard
library) of the ``device_id`` value's bytes as sent, modulo the number of partitions. An entry
without a ``device_id`` goes to partition ``crc32(b"") % P`` = 0, where the detector dead-letters
it. A producer that writes into partitions itself must compute exactly this (README: test vectors).
"""

from __future__ import annotations

import zlib

from pipeline.core.replies import first_value


def partition_of(device_id: bytes | str, partitions: int) -> int:
    if isinstance(device_id, str):
        device_id = device_id.encode()
    return zlib.crc32(device_id) % partitions


def device_field(flat: list[bytes] | None) -> bytes:
    """The first ``device_id`` value of a flat field/value list, b"" when there is none."""
    return first_value(flat or (), b"device_id", b"")
