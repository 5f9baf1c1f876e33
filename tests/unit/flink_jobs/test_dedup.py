"""The per-user recent event ids (flink_jobs.dedup)."""

from __future__ import annotations

import struct
from hashlib import blake2b

import pytest

from flink_jobs.dedup import NO_RECENT_IDS, RecentEventIds
from freshrec_common.settings import MAX_DEDUP_WINDOW_S

WINDOW = 3600


def filled(n: int, now_s: int = 1_000_000, max_ids: int = 64) -> RecentEventIds:
    ids = NO_RECENT_IDS
    for i in range(n):
        ids = ids.add(f"event-{i}", now_s, WINDOW, max_ids)
    return ids


def test_ids_within_the_window_are_duplicates_and_others_are_not() -> None:
    ids = filled(20)
    assert all(ids.contains(f"event-{i}", 1_000_000 + WINDOW, WINDOW) for i in range(20))
    assert not ids.contains("event-20", 1_000_000, WINDOW)
    assert not ids.contains("event-0", 1_000_000 + WINDOW + 1, WINDOW)


def test_old_entries_leave_on_the_next_add_and_the_cap_keeps_the_newest() -> None:
    ids = filled(5).add("late", 1_000_000 + WINDOW + 1, WINDOW, 64)
    assert len(ids) == 1 and ids.contains("late", 1_000_000 + WINDOW + 1, WINDOW)
    capped = filled(10, max_ids=4)
    assert len(capped) == 4
    assert [capped.contains(f"event-{i}", 1_000_000, WINDOW) for i in range(10)] == \
        [False] * 6 + [True] * 4


def test_eight_bytes_per_id() -> None:
    assert len(filled(20).packed) == 4 + 8 * 20 and len(filled(20)) == 20
    assert NO_RECENT_IDS.packed == b"" and len(NO_RECENT_IDS) == 0


def test_the_longest_window_keeps_every_age() -> None:
    # job.dedup_window_s is at most the largest stored age: an id at the window's far end
    # is still a duplicate, and one second later it is gone.
    w = MAX_DEDUP_WINDOW_S
    ids = NO_RECENT_IDS.add("old", 1_000_000, w, 64).add("new", 1_000_000 + w, w, 64)
    assert ids.contains("old", 1_000_000 + w, w) and ids.contains("new", 1_000_000 + w, w)
    assert len(ids.add("later", 1_000_001 + w, w, 64)) == 2  # "old" left


def test_corrupt_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="corrupt recent event ids"):
        RecentEventIds(filled(2).packed[:-1])
    with pytest.raises(ValueError, match="corrupt FV2 recent event ids"):
        RecentEventIds.from_wide(b"x" * 13)


def test_the_wide_form_reads_as_the_same_ids() -> None:
    ids = filled(3)
    wide = RecentEventIds.from_wide(b"".join(
        struct.pack("<QI", int.from_bytes(blake2b(f"event-{i}".encode(), digest_size=8)
                                          .digest(), "little"), 1_000_000) for i in range(3)))
    assert wide == ids
