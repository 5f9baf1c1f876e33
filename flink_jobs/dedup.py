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
from dataclasses import dataclass
from hashlib import blake2b

from freshrec_common.settings import MAX_DEDUP_WINDOW_S

# Stored form: the newest entry's second (uint32 epoch seconds), every id's hash (6 bytes
# each, oldest first), then every id's age (uint16 seconds before the newest). The window
# is at most the largest age (the setting is checked), so a kept entry's age fits; the
# clamp only guards a clock that went back. Hashes and ages in blocks of their own: one
# slice per id and one struct call unpack them.
_NEWEST = struct.Struct("<I")
_HASH_LEN = 6
_ENTRY_LEN = _HASH_LEN + 2
_MAX_AGE = MAX_DEDUP_WINDOW_S
_WIDE_ENTRY = struct.Struct("<QI")  # the FV2 user values' form: 64-bit hash, second


def _hash(event_id: str) -> bytes:
    """The first 6 bytes of the id's 8-byte BLAKE2b digest (FV2 kept all 8, as an int)."""
    return blake2b(event_id.encode("utf-8"), digest_size=8).digest()[:_HASH_LEN]


def _pack(hashes: list[bytes], seconds: list[int]) -> bytes:
    if not hashes:
        return b""
    newest = max(seconds)
    ages = [min(newest - s, _MAX_AGE) for s in seconds]
    return b"".join((_NEWEST.pack(newest), *hashes, struct.pack(f"<{len(ages)}H", *ages)))


def _unpack(packed: bytes) -> tuple[list[bytes], list[int]]:
    """(hashes, seconds), oldest first."""
    if not packed:
        return [], []
    n = (len(packed) - _NEWEST.size) // _ENTRY_LEN
    (newest,) = _NEWEST.unpack_from(packed)
    end = _NEWEST.size + _HASH_LEN * n
    hashes = [packed[o:o + _HASH_LEN] for o in range(_NEWEST.size, end, _HASH_LEN)]
    return hashes, [newest - a for a in struct.unpack_from(f"<{n}H", packed, end)]


def _within(hashes: list[bytes], seconds: list[int], oldest: int
            ) -> tuple[list[bytes], list[int]]:
    """The entries seen at ``oldest`` or later."""
    if not seconds or min(seconds) >= oldest:
        return hashes, seconds
    keep = [j for j, s in enumerate(seconds) if s >= oldest]
    return [hashes[j] for j in keep], [seconds[j] for j in keep]


@dataclass(frozen=True, slots=True)
class RecentEventIds:
    """Entries oldest first, in the stored form above."""

    packed: bytes = b""

    def __post_init__(self) -> None:
        if self.packed and (len(self.packed) - _NEWEST.size) % _ENTRY_LEN:
            raise ValueError(f"corrupt recent event ids ({len(self.packed)} bytes)")

    @classmethod
    def from_wide(cls, packed: bytes) -> RecentEventIds:
        """The ids as FV2 user values kept them (``<QI``: 64-bit hash, second)."""
        if len(packed) % _WIDE_ENTRY.size:
            raise ValueError(f"corrupt FV2 recent event ids ({len(packed)} bytes)")
        entries = list(_WIDE_ENTRY.iter_unpack(packed))
        return cls(_pack([struct.pack("<Q", h)[:_HASH_LEN] for h, _ in entries],
                         [s for _, s in entries]))

    def __len__(self) -> int:
        return (len(self.packed) - _NEWEST.size) // _ENTRY_LEN if self.packed else 0

    def contains(self, event_id: str, now_s: int, window_s: int) -> bool:
        """Whether ``event_id`` was added within the last ``window_s`` seconds."""
        h, oldest = _hash(event_id), now_s - window_s
        hashes, seconds = _unpack(self.packed)
        return any(eh == h and s >= oldest for eh, s in zip(hashes, seconds, strict=True))

    def add(self, event_id: str, now_s: int, window_s: int, max_ids: int) -> RecentEventIds:
        """A copy with ``event_id`` added, entries older than the window dropped and, past
        ``max_ids``, the oldest ones."""
        hashes, seconds = _within(*_unpack(self.packed), now_s - window_s)
        hashes.append(_hash(event_id))
        seconds.append(now_s)
        return RecentEventIds(_pack(hashes[-max_ids:], seconds[-max_ids:]))


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
        self._hashes, self._seconds = _within(*_unpack(ids.packed), now_s - window_s)
        self._seen = set(self._hashes)

    def add(self, event_id: str, now_s: int) -> bool:
        """Remember ``event_id``; False if it was seen within the window (a duplicate)."""
        h = _hash(event_id)
        if h in self._seen:
            return False
        self._seen.add(h)
        self._hashes.append(h)
        self._seconds.append(now_s)
        return True

    def packed(self, max_ids: int) -> RecentEventIds:
        """The newest ``max_ids`` entries as a :class:`RecentEventIds`."""
        return RecentEventIds(_pack(self._hashes[-max_ids:], self._seconds[-max_ids:]))
