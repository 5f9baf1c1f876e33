"""user-update's binary keyed value (flink_jobs.user_value)."""

from __future__ import annotations

import dataclasses
import pickle
import struct
from hashlib import blake2b

import numpy as np
import pytest

from flink_jobs.dedup import RecentEventIds
from flink_jobs.user_value import (
    Pending,
    RefreshState,
    id_hash,
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


def test_smaller_than_a_pickled_tuple() -> None:
    # Between events a user's pending list is empty: that is what checkpoints mostly hold.
    state = dataclasses.replace(busy_state(), pending=Pending(), timer_pending=False)
    packed = pickle.dumps(pack_user_value(USER, state))
    pickled = pickle.dumps((USER, state))
    assert len(packed) + 80 < len(pickled), (len(packed), len(pickled))


def test_pending_keeps_a_weight_per_item() -> None:
    pending = Pending().add(Event("a", "view", 10, user_id="u", item_id="i1"), 11, 1.0) \
        .add(Event("b", "purchase", 20, user_id="u", item_id="i2"), 21, 5.0)
    assert (pending.items, pending.weights, pending.event_ts) == (("i1", "i2"), (1.0, 5.0),
                                                                  (10, 20))


def test_the_shown_list_round_trips() -> None:
    shown = tuple(id_hash(i) for i in ("a", "b ✓", "c"))
    state = dataclasses.replace(busy_state(), shown_hashes=shown)
    assert unpack_user_value(pack_user_value(USER, state)) == (USER, state)


def test_the_shown_list_costs_four_bytes_an_item() -> None:
    ids = tuple(f"product-{n:08d}" for n in range(20))
    bare = pack_user_value(USER, busy_state())
    state = dataclasses.replace(busy_state(), shown_hashes=tuple(id_hash(i) for i in ids))
    assert len(pack_user_value(USER, state)) - len(bare) == 4 * len(ids)


def fv2_value(blob: bytes, state: RefreshState, shown: tuple[str, ...],
              recent: list[tuple[str, int]]) -> bytes:
    """A value as layout FV2 wrote it: the recent ids as 64-bit BLAKE2b hashes and seconds,
    the shown ids as NUL-joined UTF-8 text at the end."""
    p = state.pending
    n, m = len(p.event_ts), len(p.items)
    wide = b"".join(struct.pack("<QI", int.from_bytes(
        blake2b(i.encode(), digest_size=8).digest(), "little"), s) for i, s in recent)
    event_id, items = state.last_event_id.encode(), "\x00".join(p.items).encode()
    return b"".join((
        struct.pack("<3sqqqBIIIIII", b"FV2", state.seq, state.last_refresh_ms,
                    state.last_event_ts, state.timer_pending, n, m, len(shown), len(event_id),
                    len(wide), len(blob)),
        blob, wide, struct.pack(f"<{n}q{n}q{m}d", *p.event_ts, *p.ingest_ts, *p.weights),
        event_id, struct.pack("<I", len(items)), items, "\x00".join(shown).encode()))


@pytest.mark.parametrize("shown", [(), ("i-1",), ("a", "b ✓", "c")])
def test_reads_the_previous_layout(shown: tuple[str, ...]) -> None:
    # Checkpoints of the FV2 layout restore (tests/integration/test_state_fixture.py holds
    # one): the shown ids become their hashes, the recent ids their shorter form, every
    # other field as it was.
    recent = [(f"event-{n}", 1_000_000) for n in range(5)]  # as busy_state() adds them
    want = dataclasses.replace(busy_state(), shown_hashes=tuple(id_hash(i) for i in shown))
    blob, got = unpack_user_value(fv2_value(USER, busy_state(), shown, recent))
    assert (blob, got) == (USER, want)
    assert got.recent_ids.contains("event-3", 1_000_100, 3600)
    assert not got.recent_ids.contains("event-9", 1_000_100, 3600)


def test_foreign_bytes_are_refused() -> None:
    with pytest.raises(ValueError, match="magic"):
        unpack_user_value(b"nope" * 20)
