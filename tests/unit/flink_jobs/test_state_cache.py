"""The operators' cache of their MapState values: reads of what this instance wrote skip the
state; writes and removals always reach it; bounded; never older than half the TTL."""

from __future__ import annotations

import pytest

from flink_jobs.state_cache import CachedMapState

pytestmark = pytest.mark.unit


class DictMapState:
    """The MapState calls the operators make, over a dict, counting the reads."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.reads = 0

    def get(self, key: str) -> bytes | None:
        self.reads += 1
        return self.values.get(key)

    def put_all(self, values: dict[str, bytes]) -> None:
        self.values.update(values)

    def remove(self, key: str) -> None:
        self.values.pop(key, None)


def test_written_values_are_read_back_without_the_state() -> None:
    state = DictMapState()
    cache = CachedMapState(state, max_entries=10)
    assert cache.get_many(["u1", "u2"], now=0) == {"u1": None, "u2": None}
    assert state.reads == 2
    cache.put_all({"u1": b"a", "u2": b"b"}, now=1)
    assert state.values == {"u1": b"a", "u2": b"b"}  # written through
    assert cache.get_many(["u2", "u1"], now=2) == {"u2": b"b", "u1": b"a"}
    assert state.reads == 2
    cache.put_all({"u1": b"c"}, now=3)
    assert cache.get_many(["u1"], now=4) == {"u1": b"c"} and state.values["u1"] == b"c"


def test_a_value_only_read_is_not_kept() -> None:
    # Its last write (which Flink's TTL counts from) is unknown here.
    state = DictMapState()
    state.values["u1"] = b"old"
    cache = CachedMapState(state, max_entries=10, ttl_ms=100)
    for now in (0, 1):
        assert cache.get_many(["u1"], now=now) == {"u1": b"old"}
    assert state.reads == 2 and len(cache) == 0


def test_removed_keys_leave_state_and_cache() -> None:
    state = DictMapState()
    cache = CachedMapState(state, max_entries=10)
    cache.put_all({"u1": b"a", "u2": b"b"}, now=0)
    cache.remove("u1")
    assert "u1" not in state.values
    assert cache.get_many(["u1", "u2"], now=1) == {"u1": None, "u2": b"b"}
    assert state.reads == 1  # u1 only


def test_the_least_recently_written_leave_a_full_cache() -> None:
    state = DictMapState()
    cache = CachedMapState(state, max_entries=20)
    cache.put_all({f"u{n}": b"x" for n in range(20)}, now=0)
    cache.put_all({"u0": b"y"}, now=1)  # rewritten: now the most recent
    cache.put_all({"u20": b"z"}, now=2)  # one over: a tenth more goes (u1, u2, u3)
    assert len(cache) == 18
    cache.get_many(["u0", "u20", "u4", "u19"], now=3)
    assert state.reads == 0
    assert cache.get_many(["u1", "u2", "u3"], now=3) == {f"u{n}": b"x" for n in (1, 2, 3)}
    assert state.reads == 3  # from the state, which kept everything
    assert len(state.values) == 21


def test_values_written_half_a_ttl_ago_are_read_from_the_state() -> None:
    state = DictMapState()
    cache = CachedMapState(state, max_entries=10, ttl_ms=1_000)
    cache.put_all({"u1": b"a"}, now=0)
    cache.get_many(["u1"], now=499)
    assert state.reads == 0
    state.values.clear()  # as Flink's TTL would, later; the cache must not outlive it
    assert cache.get_many(["u1"], now=500) == {"u1": None}
    assert state.reads == 1


def test_no_cache_at_zero_entries() -> None:
    state = DictMapState()
    cache = CachedMapState(state, max_entries=0)
    cache.put_all({"u1": b"a"}, now=0)
    assert cache.get_many(["u1"], now=0) == {"u1": b"a"} and state.reads == 1
    with pytest.raises(ValueError, match="max_entries must be >= 0"):
        CachedMapState(state, max_entries=-1)
