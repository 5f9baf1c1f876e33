"""Flink keys of the job's shards, chosen so that the shards spread evenly over subtasks.

Flink sends a key to key group ``murmur(key.hashCode()) % max_parallelism`` and key group
``g`` to subtask ``g * p // max_parallelism``. Keyed by the shard number itself, a small
shard count bunches up: shards 0-3 all fall in subtask 1 of 2. Shard ``s`` of ``n`` is
therefore keyed by the smallest non-negative int whose key group is
``ceil(s * MAX_PARALLELISM / n)``: with ``p`` dividing ``n``, every subtask holds ``n / p``
shards. The job pins its max parallelism to :data:`MAX_PARALLELISM` (Flink's own default
below 86 subtasks), which the keys depend on.

>>> shard_keys(4)
(312, 75, 84, 57)
>>> [subtask(k, 2) for k in shard_keys(4)], [subtask(k, 4) for k in shard_keys(4)]
([0, 0, 1, 1], [0, 1, 2, 3])
>>> [subtask(s, 2) for s in range(4)]  # the plain shard numbers: all on subtask 1
[1, 1, 1, 1]
"""

from __future__ import annotations

import zlib
from functools import lru_cache

MAX_PARALLELISM = 128
_M32 = 0xFFFFFFFF


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def flink_murmur(code: int) -> int:
    """Flink's ``MathUtils.murmurHash(int)``: the key-group hash of an ``Integer`` key."""
    h = (code * 0xCC9E2D51) & _M32
    h = (_rotl(h, 15) * 0x1B873593) & _M32
    h = (_rotl(h, 13) * 5 + 0xE6546B64) & _M32
    h ^= 4
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    signed = h - (1 << 32) if h & 0x80000000 else h
    return abs(signed) if signed != -(1 << 31) else 0


def key_group(key: int, max_parallelism: int = MAX_PARALLELISM) -> int:
    """The key group Flink gives an ``Integer`` key."""
    return flink_murmur(key) % max_parallelism


def subtask(key: int, parallelism: int, max_parallelism: int = MAX_PARALLELISM) -> int:
    """The subtask that owns an ``Integer`` key at this parallelism."""
    return key_group(key, max_parallelism) * parallelism // max_parallelism


@lru_cache(maxsize=16)
def shard_keys(shards: int, max_parallelism: int = MAX_PARALLELISM) -> tuple[int, ...]:
    """The key of each shard (``shards`` <= ``max_parallelism``), by shard number."""
    if not 1 <= shards <= max_parallelism:
        raise ValueError(f"shards must be in 1..{max_parallelism}, got {shards}")
    keys = []
    for s in range(shards):
        target = -(-s * max_parallelism // shards)
        k = 0
        while key_group(k, max_parallelism) != target:
            k += 1
        keys.append(k)
    return tuple(keys)


def shard_of(key: str, shards: int) -> int:
    """The shard of an id: ``floorMod((int) crc32(utf8), shards)``, exactly as the Java
    ``RecordBundler`` shards users (Java's int is signed).

    >>> shard_of("item-1", 16) == shard_of("item-1", 16), 0 <= shard_of("x", 3) < 3
    (True, True)
    >>> shard_of("u2", 3)  # crc32 is 0x8a... : negative as a Java int
    2
    """
    crc = zlib.crc32(key.encode("utf-8"))
    return (crc - (1 << 32) if crc >= 1 << 31 else crc) % shards
