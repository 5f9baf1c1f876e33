"""The per-user recent event ids (flink_jobs.dedup) and the refresh bookkeeping they live in
(RefreshState, Pending)."""

from __future__ import annotations

import pickle

from flink_jobs.dedup import NO_RECENT_IDS, RecentEventIds
from flink_jobs.operators import Pending, RefreshState, UserUpdate
from schemas.events import Event

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


def test_refresh_state_round_trips_with_its_ids() -> None:
    state = RefreshState(seq=3, last_event_id="e", recent_ids=filled(3))
    back = pickle.loads(pickle.dumps(state))
    assert back == state and back.recent_ids.contains("event-2", 1_000_000, WINDOW)


def test_refresh_state_pickled_before_recent_ids_existed_loads_with_none() -> None:
    # The state list of RefreshState as the previous version pickled it (six fields).
    old = RefreshState.__new__(RefreshState)
    old.__setstate__([7, 1234, True, 99, "last", Pending()])
    assert (old.seq, old.last_refresh_ms, old.timer_pending, old.last_event_ts,
            old.last_event_id) == (7, 1234, True, 99, "last")
    assert old.recent_ids == NO_RECENT_IDS


def test_a_refresh_keeps_the_recent_ids() -> None:
    state = RefreshState(seq=2, timer_pending=True, last_event_id="e", recent_ids=filled(3),
                         pending=Pending(("item",), (1,), (2,)))
    after, request = UserUpdate._refresh("user", b"blob", state, 5000)
    assert after.recent_ids == state.recent_ids and after.last_event_id == "e"
    assert (after.seq, after.last_refresh_ms, after.timer_pending, after.pending) == \
        (3, 5000, False, Pending())
    assert (request.seq, request.pending) == (3, state.pending)


def test_pending_keeps_a_weight_per_item_and_loads_older_pickles() -> None:
    pending = Pending().add(Event("a", "view", 10, user_id="u", item_id="i1"), 11, 1.0) \
        .add(Event("b", "purchase", 20, user_id="u", item_id="i2"), 21, 5.0)
    assert (pending.items, pending.weights, pending.event_ts) == (("i1", "i2"), (1.0, 5.0),
                                                                  (10, 20))
    assert pickle.loads(pickle.dumps(pending)) == pending
    # Pending as the previous version pickled it (three fields): weight 0 for its items (no
    # cluster learning), so items and weights stay aligned when the next event is added.
    old = Pending.__new__(Pending)
    old.__setstate__([("i1",), (10,), (11,)])
    assert (old.items, old.weights) == (("i1",), (0.0,))
