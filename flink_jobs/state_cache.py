"""A keyed ``MapState``'s values, cached in the operator instance that owns them.

Every read of PyFlink's ``MapState`` is a call into Java (the key serialised, the value
looked up and unpickled): a user-update or item-update call reads each of its users or
items once, and those reads were ~6-9 % of the job's Python time. A map key here (a user or
item id) always belongs to one shard, so the owner of its shard is the only reader and
writer of its value, and a value this instance wrote is the value the state holds.

It is a cache, never the state: every write and removal goes to the state as before, a
(re)started operator begins with an empty cache and reads through it, and the cache holds
the values it wrote last, at most ``max_entries`` (the least recently written go first; a
value only read is not kept: its age is unknown). With a state TTL (Flink's expiry counts
from the last write), a value written more than half the TTL ago is read from the state
again, so an expired value is never returned from here.

>>> state = {}
>>> class Stub:  # a MapState's get / put_all / remove over a dict
...     get, remove = state.get, state.pop
...     def put_all(self, values): state.update(values)
>>> cache = CachedMapState(Stub(), max_entries=2)
>>> cache.put_all({"a": b"1", "b": b"2"}, now=0)
>>> state["a"] = b"9"  # behind the cache's back: never happens in the job
>>> cache.get_many(["a", "c"], now=0)
{'a': b'1', 'c': None}
>>> cache.put_all({"c": b"3"}, now=0)  # "a", the oldest write, leaves the cache
>>> cache.get_many(["a"], now=0)
{'a': b'9'}
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any


class CachedMapState:
    """``get_many`` / ``put_all`` / ``remove`` over a ``MapState`` of bytes by string key,
    with the values this instance wrote last kept in memory (see the module)."""

    def __init__(self, state: Any, max_entries: int, ttl_ms: int | None = None) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        self.state = state
        self.max_entries = max_entries
        # Reads of values cached longer than this go to the state (None: no TTL).
        self._fresh_ms = None if ttl_ms is None else ttl_ms // 2
        self._values: dict[str, tuple[bytes, int]] = {}  # key -> (value, written at), oldest first

    def __len__(self) -> int:
        return len(self._values)

    def get_many(self, keys: Iterable[str], now: int) -> dict[str, bytes | None]:
        out: dict[str, bytes | None] = {}
        values, fresh = self._values, self._fresh_ms
        for key in keys:
            hit = values.get(key)
            out[key] = (hit[0] if hit is not None and (fresh is None or now - hit[1] < fresh)
                        else self.state.get(key))
        return out

    def put_all(self, values: Mapping[str, bytes], now: int) -> None:
        self.state.put_all(values)
        self._keep(values, now)

    def remove(self, key: str) -> None:
        self.state.remove(key)
        self._values.pop(key, None)

    def _keep(self, values: Mapping[str, bytes], now: int) -> None:
        cached = self._values
        for key, value in values.items():
            cached.pop(key, None)  # to the end: the most recent
            cached[key] = (value, now)
        over = len(cached) - self.max_entries
        if over > 0:
            # A tenth more than needed goes at once, so a full cache is not trimmed per call.
            drop = min(len(cached), over + self.max_entries // 10)
            for key in list(itertools.islice(cached, drop)):
                del cached[key]
