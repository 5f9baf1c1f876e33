"""Byte layouts of the bundles that cross between the job's Java and Python operators.

The Java operators (``flink_jobs/java``) gather Kafka records into bundles and split the
Python operators' output back into records, so Python is called once per bundle. Every
integer is big-endian (Java's ``DataOutputStream``).

* Record bundle (``RecordBundler``, input of the Python operators): ``int32 n``, then per
  record ``int32 shard, int32 partition, int64 offset, int64 timestamp, int32 key_len
  (-1: null) + key, int32 value_len (-1: null) + value``. The events' bundles hold every
  shard of one user-update subtask (the bundle is named by the lowest). A count of -1 is a
  barrier marker (:data:`BARRIER_MARKER`): the events' bundler sends one to every user
  shard after its buffered bundles and before each checkpoint barrier.
* Shard bundle (``ShardRecordBundler``): ``int32 n``, then per payload ``int32 len + bytes``.
* Output bundle (a Python call's one output record, split by ``KeyedRecordSplitter`` and
  ``ShardRecordSplitter``): sections of ``byte part, int32 n`` and n records; parts 0-2 are
  Kafka records ``int32 key_len + key, int32 value_len + value`` (-1: null, a null value is
  a tombstone), part 3 holds ``int32 shard, int32 len + payload`` records.

>>> out = OutputBundle()
>>> out.keyed(RECOMMENDATIONS, b"u1", b"{}")
>>> out.keyed(RECOMMENDATIONS, b"u2", None)
>>> out.sharded(ITEM_GRADIENTS, 3, b"g")
>>> decode_output_bundle(out.to_bytes())
{1: [(b'u1', b'{}'), (b'u2', None)], 3: [(3, b'g')]}
>>> records = decode_record_bundle(encode_record_bundle([RawRecord(0, 7, 99, None, b"x")]))
>>> records[0].offset, records[0].key, records[0].value
(7, None, b'x')
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import NamedTuple

DEAD_LETTERS = 0
RECOMMENDATIONS = 1
ITEM_EMBEDDINGS = 2
ITEM_GRADIENTS = 3
_SHARD_PARTS = frozenset({ITEM_GRADIENTS})
# Kinds of the ITEM_GRADIENTS messages (their first byte): summed gradients of a user
# bundle, an item_upsert event's raw bytes, co-visitation pairs.
GRADIENT_MESSAGE = b"G"
UPSERT_MESSAGE = b"U"
COVISIT_MESSAGE = b"C"

_INT = struct.Struct(">i")
# A record bundle of count -1: a checkpoint barrier follows.
BARRIER_MARKER = _INT.pack(-1)
_RECORD_HEAD = struct.Struct(">iiqq")
_SECTION = struct.Struct(">bi")
_SHARD_RECORD = struct.Struct(">ii")


class RawRecord(NamedTuple):
    """One Kafka record as the Java bundler passes it on, with the shard it was bundled for."""

    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    shard: int = 0


def _read_bytes(buf: bytes, off: int) -> tuple[bytes | None, int]:
    (n,) = _INT.unpack_from(buf, off)
    off += 4
    if n < 0:
        return None, off
    return buf[off:off + n], off + n


def _bytes_field(value: bytes | None) -> bytes:
    return _INT.pack(-1) if value is None else _INT.pack(len(value)) + value


def decode_record_bundle(payload: bytes) -> list[RawRecord]:
    """The records of a record bundle, in order."""
    (n,) = _INT.unpack_from(payload, 0)
    off = 4
    out = []
    for _ in range(n):
        shard, partition, offset, timestamp = _RECORD_HEAD.unpack_from(payload, off)
        key, off = _read_bytes(payload, off + _RECORD_HEAD.size)
        value, off = _read_bytes(payload, off)
        out.append(RawRecord(partition, offset, timestamp, key, value, shard))
    return out


def is_barrier_marker(payload: bytes) -> bool:
    """Whether a record bundle is the marker sent ahead of a checkpoint barrier."""
    return payload == BARRIER_MARKER


def encode_record_bundle(records: Iterable[RawRecord]) -> bytes:
    """A record bundle as the Java bundler writes it (for tests and benchmarks)."""
    recs = list(records)
    return _INT.pack(len(recs)) + b"".join(
        _RECORD_HEAD.pack(r.shard, r.partition, r.offset, r.timestamp) + _bytes_field(r.key)
        + _bytes_field(r.value) for r in recs)


def decode_shard_bundle(payload: bytes) -> list[bytes]:
    """The payloads of a shard bundle, in order."""
    (n,) = _INT.unpack_from(payload, 0)
    off = 4
    out = []
    for _ in range(n):
        value, off = _read_bytes(payload, off)
        assert value is not None
        out.append(value)
    return out


class OutputBundle:
    """The one output record of a Python call: records for each sink, grouped by part."""

    def __init__(self) -> None:
        self._parts: dict[int, list[bytes]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._parts.values())

    def keyed(self, part: int, key: bytes | None, value: bytes | None) -> None:
        """A Kafka record for the sink of ``part`` (a null value is a tombstone)."""
        self._parts.setdefault(part, []).append(_bytes_field(key) + _bytes_field(value))

    def sharded(self, part: int, shard: int, payload: bytes) -> None:
        """A payload for shard ``shard`` of the keyed operator fed by ``part``."""
        self._parts.setdefault(part, []).append(
            _SHARD_RECORD.pack(shard, len(payload)) + payload)

    def to_bytes(self) -> bytes:
        return b"".join(_SECTION.pack(part, len(recs)) + b"".join(recs)
                        for part, recs in self._parts.items())


def decode_output_bundle(payload: bytes) -> dict[int, list[tuple]]:
    """Records per part of an output bundle (for tests; Java splits them in the job)."""
    out: dict[int, list[tuple]] = {}
    off = 0
    while off < len(payload):
        part, n = _SECTION.unpack_from(payload, off)
        off += _SECTION.size
        recs = out.setdefault(part, [])
        for _ in range(n):
            if part in _SHARD_PARTS:
                shard, size = _SHARD_RECORD.unpack_from(payload, off)
                off += _SHARD_RECORD.size
                recs.append((shard, payload[off:off + size]))
                off += size
            else:
                key, off = _read_bytes(payload, off)
                value, off = _read_bytes(payload, off)
                recs.append((key, value))
    return out
