"""user-update's keyed value: a user's model state and refresh bookkeeping in one record.

The value is binary (``pack_user_value``): a fixed header, the ``UserState`` bytes, the
recent event ids, the pending events' columns, then the ids in UTF-8. Pickling the
dataclasses instead cost ~100 B more per user in a checkpoint (class paths, field lists).
Values written by older versions, the pickled ``(UserState bytes, RefreshState)`` tuple, are
still read, and still written for the rare pending item id with a NUL in it.

>>> from schemas.events import Event
>>> pending = Pending().add(Event("e1", "view", 5, user_id="u", item_id="i1"), 7, 1.0)
>>> state = RefreshState(seq=3, last_event_id="e1", pending=pending)
>>> unpack_user_value(pack_user_value(b"user-bytes", state)) == (b"user-bytes", state)
True
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from typing import Any

from flink_jobs.dedup import NO_RECENT_IDS, RecentEventIds
from schemas.events import Event

_MAGIC = b"FV1"
# magic, seq, last_refresh_ms, last_event_ts, timer_pending, pending events, pending items,
# last_event_id bytes, recent id bytes, user state bytes
_HEAD = struct.Struct("<3sqqqBIIIII")
_NUL = "\x00"


def _set_fields_with_defaults(obj: Any, values: list[Any]) -> None:
    """``__setstate__`` of a frozen slots dataclass kept in state: values pickled before a
    field was added (savepoints of older versions) lack it, and the field keeps its default."""
    for f in dataclasses.fields(obj):
        object.__setattr__(obj, f.name, f.default)
    for f, value in zip(dataclasses.fields(obj), values, strict=False):
        object.__setattr__(obj, f.name, value)


@dataclass(frozen=True, slots=True)
class Pending:
    """Events applied since the user's last list: for latency, test-then-learn metrics and
    the cold-start clusters (``weights``: the positive event weight per item)."""

    items: tuple[str, ...] = ()
    event_ts: tuple[int, ...] = ()
    ingest_ts: tuple[int, ...] = ()
    weights: tuple[float, ...] = ()

    def add(self, event: Event, ingest_ts: int, weight: float) -> Pending:
        if event.item_id is None:
            return Pending(self.items, (*self.event_ts, event.ts_ms),
                           (*self.ingest_ts, ingest_ts), self.weights)
        return Pending((*self.items, event.item_id), (*self.event_ts, event.ts_ms),
                       (*self.ingest_ts, ingest_ts), (*self.weights, weight))

    def __setstate__(self, values: list[Any]) -> None:
        _set_fields_with_defaults(self, values)
        if len(self.weights) != len(self.items):
            # Pickled before weights existed: weight 0 keeps those items out of the clusters,
            # and items and weights stay aligned for the next event.
            object.__setattr__(self, "weights", (0.0,) * len(self.items))


NO_PENDING = Pending()


@dataclass(frozen=True, slots=True)
class RefreshState:
    """Per-user bookkeeping of list refreshes and recent event ids (kept in keyed state)."""

    seq: int = 0
    last_refresh_ms: int = 0
    timer_pending: bool = False
    last_event_ts: int = 0
    last_event_id: str = ""
    pending: Pending = NO_PENDING
    recent_ids: RecentEventIds = NO_RECENT_IDS

    __setstate__ = _set_fields_with_defaults


def pack_user_value(blob: bytes, state: RefreshState) -> bytes | tuple[bytes, RefreshState]:
    """The stored form of a user's value (see the module docstring)."""
    pending = state.pending
    items = _NUL.join(pending.items)
    if items.count(_NUL) != max(len(pending.items) - 1, 0):
        return blob, state  # an id the NUL-joined text cannot carry: the pickled form
    event_id = state.last_event_id.encode("utf-8")
    recent = state.recent_ids.packed
    n, m = len(pending.event_ts), len(pending.items)
    return b"".join((
        _HEAD.pack(_MAGIC, state.seq, state.last_refresh_ms, state.last_event_ts,
                   state.timer_pending, n, m, len(event_id), len(recent), len(blob)),
        blob, recent,
        struct.pack(f"<{n}q{n}q{m}d", *pending.event_ts, *pending.ingest_ts, *pending.weights),
        event_id, items.encode("utf-8"),
    ))


def unpack_user_value(stored: bytes | tuple[bytes, RefreshState]
                      ) -> tuple[bytes, RefreshState]:
    """Inverse of :func:`pack_user_value`; also reads the pickled tuple of older versions."""
    if isinstance(stored, tuple):
        return stored
    if stored[:3] != _MAGIC:
        raise ValueError("not a freshrec user value (bad magic)")
    (_, seq, last_refresh_ms, last_event_ts, timer_pending, n, m, id_len, recent_len,
     blob_len) = _HEAD.unpack_from(stored)
    off = _HEAD.size
    blob = stored[off:off + blob_len]
    off += blob_len
    recent = stored[off:off + recent_len]
    off += recent_len
    cols = struct.unpack_from(f"<{n}q{n}q{m}d", stored, off)
    off += 16 * n + 8 * m
    event_id = stored[off:off + id_len].decode("utf-8")
    text = stored[off + id_len:].decode("utf-8")
    items = tuple(text.split(_NUL)) if m else ()
    if len(items) != m:
        raise ValueError("corrupt freshrec user value (item count)")
    pending = Pending(items, cols[:n], cols[n:2 * n], cols[2 * n:]) if n else NO_PENDING
    return blob, RefreshState(seq, last_refresh_ms, bool(timer_pending), last_event_ts,
                              event_id, pending,
                              RecentEventIds(recent) if recent else NO_RECENT_IDS)
