"""The event ids a user sent lately, for de-duplication inside the user's own state.

Each id is kept as a 48-bit hash and the second it was first seen, for
``job.dedup_window_s`` and at most ``job.dedup_max_ids`` per user: 8 bytes an id plus 4
(against ~50 B per entry of a Flink MapState of id strings with TTL). Two different ids of
one user collide with probability ~n^2 / 2^49 (n ids in the window): never, in practice.

>>> ids = RecentEventIds()
>>> ids = ids.add("e1", now_s=100, window_s=60, max_ids=3)
>>> ids.contains("e1", now_s=150, window_s=60), ids.contains("e2", now_s=150, window_s=60)
(True, False)
>>> ids.contains("e1", now_s=161, window_s=60)  # outside the window
False
>>> for i in range(2, 6):
...     ids = ids.add(f"e{i}", now_s=150, window_s=60, max_ids=3)
>>> len(ids), ids.contains("e2", now_s=150, window_s=60)  # the oldest made room
(3, False)
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from hashlib import blake2b

_NEWEST = struct.Struct("<I")  # the newest entry's second (epoch seconds)
# id hash (low 32 bits, high 16 bits), age: seconds before the newest entry, at most
# _MAX_AGE (an older entry reads as _MAX_AGE old: it may stay past a window over ~18 h,
# and an id seen again is a duplicate all the same)
_ENTRY = struct.Struct("<IHH")
_MAX_AGE = 0xFFFF
_HASH_BITS = 48
_WIDE_ENTRY = struct.Struct("<QI")  # the FV2 user values' form: 64-bit hash, second


def _hash(event_id: str) -> int:
    """The low 48 bits of the id's 64-bit BLAKE2b hash (FV2 kept all 64)."""
    h = int.from_bytes(blake2b(event_id.encode("utf-8"), digest_size=8).digest(), "little")
    return h & ((1 << _HASH_BITS) - 1)


def _pack(entries: list[tuple[int, int]]) -> bytes:
    """(hash, second) entries, oldest first, in the stored form."""
    if not entries:
        return b""
    newest = max(s for _, s in entries)
    return _NEWEST.pack(newest) + b"".join(
        _ENTRY.pack(h & 0xFFFFFFFF, h >> 32, min(newest - s, _MAX_AGE)) for h, s in entries)


def _unpack(packed: bytes) -> Iterable[tuple[int, int]]:
    if not packed:
        return
    (newest,) = _NEWEST.unpack_from(packed)
    for lo, hi, age in _ENTRY.iter_unpack(memoryview(packed)[_NEWEST.size:]):
        yield lo | hi << 32, newest - age


@dataclass(frozen=True, slots=True)
class RecentEventIds:
    """Entries oldest first (``_pack``: the newest second, then hash and age per id)."""

    packed: bytes = b""

    @classmethod
    def from_wide(cls, packed: bytes) -> RecentEventIds:
        """The ids as FV2 user values kept them (``<QI``: 64-bit hash, second)."""
        mask = (1 << _HASH_BITS) - 1
        return cls(_pack([(h & mask, s) for h, s in _WIDE_ENTRY.iter_unpack(packed)]))

    def __len__(self) -> int:
        return max(len(self.packed) - _NEWEST.size, 0) // _ENTRY.size

    def contains(self, event_id: str, now_s: int, window_s: int) -> bool:
        """Whether ``event_id`` was added within the last ``window_s`` seconds."""
        h, oldest = _hash(event_id), now_s - window_s
        return any(eh == h and seen >= oldest for eh, seen in _unpack(self.packed))

    def add(self, event_id: str, now_s: int, window_s: int, max_ids: int) -> RecentEventIds:
        """A copy with ``event_id`` added, entries older than the window dropped and, past
        ``max_ids``, the oldest ones."""
        oldest = now_s - window_s
        kept = [e for e in _unpack(self.packed) if e[1] >= oldest]
        kept.append((_hash(event_id), now_s))
        return RecentEventIds(_pack(kept[-max_ids:]))


NO_RECENT_IDS = RecentEventIds()


class RecentIdsWindow:
    """A user's recent ids while a bundle is applied: unpacked once, a set for the checks,
    packed once at the end (per event, :meth:`RecentEventIds.add` would re-pack them all).

    >>> w = RecentIdsWindow(NO_RECENT_IDS, now_s=100, window_s=60)
    >>> w.add("e1", 100), w.add("e1", 100), w.add("e2", 101)
    (True, False, True)
    >>> w.packed(max_ids=1).contains("e2", 101, 60), len(w.packed(max_ids=8))
    (True, 2)
    """

    def __init__(self, ids: RecentEventIds, now_s: int, window_s: int) -> None:
        oldest = now_s - window_s
        self._entries = [e for e in _unpack(ids.packed) if e[1] >= oldest]
        self._hashes = {h for h, _ in self._entries}

    def add(self, event_id: str, now_s: int) -> bool:
        """Remember ``event_id``; False if it was seen within the window (a duplicate)."""
        h = _hash(event_id)
        if h in self._hashes:
            return False
        self._hashes.add(h)
        self._entries.append((h, now_s))
        return True

    def packed(self, max_ids: int) -> RecentEventIds:
        """The newest ``max_ids`` entries as a :class:`RecentEventIds`."""
        return RecentEventIds(_pack(self._entries[-max_ids:]))
