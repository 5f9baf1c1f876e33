"""user-update's binary keyed value (flink_jobs.user_value)."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from flink_jobs.dedup import RecentEventIds
from flink_jobs.user_value import (
    Pending,
    RefreshState,
    pack_user_value,
    unpack_user_value,
)
from online_models.state import UserState
from schemas.events import Event

USER = UserState("user-1", np.arange(32, dtype=np.float32), 0.5,
                 (("item-1", 1_000, 1.0, "view"),), frozenset({"item-9"}), frozenset(), 3,
                 1_000).to_bytes()


def busy_state() -> RefreshState:
    ids = RecentEventIds()
    for n in range(5):
        ids = ids.add(f"event-{n}", now_s=1_000_000, window_s=3600, max_ids=64)
    pending = Pending()
    for n, event in enumerate([Event("a", "view", 10, user_id="u", item_id="i-1"),
                               Event("b", "purchase", 20, user_id="u", item_id="ï-2 ✓")]):
        pending = pending.add(event, 100 + n, 1.0 + 4 * n)
    return RefreshState(seq=12, last_refresh_ms=1_700_000_000_123, timer_pending=True,
                        last_event_ts=1_700_000_000_000, last_event_id="évent-\x01-id",
                        pending=pending, recent_ids=ids)


@pytest.mark.parametrize("state", [RefreshState(), busy_state()])
def test_round_trip(state: RefreshState) -> None:
    packed = pack_user_value(USER, state)
    assert isinstance(packed, bytes)
    assert unpack_user_value(packed) == (USER, state)


def test_smaller_than_the_pickled_tuple() -> None:
    # Between events a user's pending list is empty: that is what checkpoints mostly hold.
    state = dataclasses.replace(busy_state(), pending=Pending(), timer_pending=False)
    packed = pickle.dumps(pack_user_value(USER, state))
    pickled = pickle.dumps((USER, state))
    assert len(packed) + 80 < len(pickled), (len(packed), len(pickled))


def test_reads_the_pickled_tuple_of_older_versions() -> None:
    old = pickle.loads(pickle.dumps((USER, busy_state())))
    assert unpack_user_value(old) == (USER, busy_state())


def test_a_restored_old_pending_takes_the_next_event_and_packs() -> None:
    # A savepoint taken while the user had events pending, written before Pending.weights.
    old = Pending.__new__(Pending)
    old.__setstate__([("i1", "i2"), (10, 20), (11, 21)])
    pending = old.add(Event("c", "view", 30, user_id="u", item_id="i3"), 31, 1.0)
    state = RefreshState(seq=4, timer_pending=True, pending=pending)
    assert unpack_user_value(pack_user_value(USER, state)) == (USER, state)
    assert pending.weights == (0.0, 0.0, 1.0)


def test_an_item_id_with_nul_keeps_the_pickled_form() -> None:
    pending = Pending().add(Event("a", "view", 10, user_id="u", item_id="bad\x00id"), 11, 1.0)
    state = RefreshState(pending=pending)
    stored = pack_user_value(USER, state)
    assert stored == (USER, state)
    assert unpack_user_value(stored) == (USER, state)


def test_foreign_bytes_are_refused() -> None:
    with pytest.raises(ValueError, match="magic"):
        unpack_user_value(b"nope" * 20)
