"""The per-user recent event ids (flink_jobs.dedup)."""

from __future__ import annotations

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


def test_twelve_bytes_per_id() -> None:
    assert len(filled(20).packed) == 240
