"""The event ids a user sent lately, for de-duplication inside the user's own state.

Each id is kept as a 64-bit hash and the second it was first seen (12 bytes, against ~50 B
per entry of a Flink MapState of id strings with TTL), for ``job.dedup_window_s`` and at
most ``job.dedup_max_ids`` per user. Two different ids of one user collide with
probability ~n^2 / 2^65 (n ids in the window): never, in practice.

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
from dataclasses import dataclass
from hashlib import blake2b

_ENTRY = struct.Struct("<QI")  # id hash, first seen (epoch seconds)


def _hash(event_id: str) -> int:
    return int.from_bytes(blake2b(event_id.encode("utf-8"), digest_size=8).digest(), "little")


@dataclass(frozen=True, slots=True)
class RecentEventIds:
    """Entries oldest first, packed as ``<QI`` (hash, seen second)."""

    packed: bytes = b""

    def __len__(self) -> int:
        return len(self.packed) // _ENTRY.size

    def contains(self, event_id: str, now_s: int, window_s: int) -> bool:
        """Whether ``event_id`` was added within the last ``window_s`` seconds."""
        h, oldest = _hash(event_id), now_s - window_s
        return any(eh == h and seen >= oldest for eh, seen in _ENTRY.iter_unpack(self.packed))

    def add(self, event_id: str, now_s: int, window_s: int, max_ids: int) -> RecentEventIds:
        """A copy with ``event_id`` added, entries older than the window dropped and, past
        ``max_ids``, the oldest ones."""
        oldest = now_s - window_s
        kept = [e for e in _ENTRY.iter_unpack(self.packed) if e[1] >= oldest]
        kept.append((_hash(event_id), now_s))
        return RecentEventIds(b"".join(_ENTRY.pack(*e) for e in kept[-max_ids:]))


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
        self._entries = [e for e in _ENTRY.iter_unpack(ids.packed) if e[1] >= oldest]
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
        return RecentEventIds(b"".join(_ENTRY.pack(*e) for e in self._entries[-max_ids:]))
