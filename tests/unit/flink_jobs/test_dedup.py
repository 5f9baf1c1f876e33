"""The per-user recent event ids (flink_jobs.dedup)."""

from __future__ import annotations

import struct
from hashlib import blake2b

from flink_jobs.dedup import NO_RECENT_IDS, RecentEventIds

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


def test_ages_past_the_stored_range_stay_duplicates() -> None:
    # Ages are kept up to ~18 h: an id older than that reads as 18 h old, so with a longer
    # window it is still a duplicate (kept longer, never forgotten early).
    day = 86_400
    ids = NO_RECENT_IDS.add("old", 1_000_000, 2 * day, 64).add("new", 1_000_000 + day,
                                                                 2 * day, 64)
    assert ids.contains("old", 1_000_000 + day, 2 * day)
    assert ids.contains("new", 1_000_000 + day, 2 * day)


def test_the_wide_form_reads_as_the_same_ids() -> None:
    ids = filled(3)
    wide = RecentEventIds.from_wide(b"".join(
        struct.pack("<QI", int.from_bytes(blake2b(f"event-{i}".encode(), digest_size=8)
                                          .digest(), "little"), 1_000_000) for i in range(3)))
    assert wide == ids
