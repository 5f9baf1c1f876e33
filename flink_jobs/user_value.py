"""user-update's keyed value: a user's model state and refresh bookkeeping in one record.

The value is binary (``pack_user_value``, layout ``FV2``): a fixed header, the
``UserState`` bytes, the recent event ids, the pending events' columns, then the last event
id, the pending item ids and the ids of the list last shown, in UTF-8 (ids never contain
control characters: the event codec refuses them). Layout ``FV1`` was the per-record job's;
this job does not restore its savepoints (docs/operations.md).

>>> from schemas.events import Event
>>> pending = Pending().add(Event("e1", "view", 5, user_id="u", item_id="i1"), 7, 1.0)
>>> state = RefreshState(seq=3, last_event_id="e1", pending=pending, shown=("i2", "i3"))
>>> unpack_user_value(pack_user_value(b"user-bytes", state)) == (b"user-bytes", state)
True
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from flink_jobs.dedup import NO_RECENT_IDS, RecentEventIds
from schemas.events import Event

_MAGIC = b"FV2"
# magic, seq, last_refresh_ms, last_event_ts, timer_pending, pending events, pending items,
# shown items, last_event_id bytes, recent id bytes, user state bytes
_HEAD = struct.Struct("<3sqqqBIIIIII")
_NUL = "\x00"


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


NO_PENDING = Pending()


@dataclass(frozen=True, slots=True)
class RefreshState:
    """Per-user bookkeeping of list refreshes, recent event ids and the list last shown
    (kept in keyed state)."""

    seq: int = 0
    last_refresh_ms: int = 0
    timer_pending: bool = False
    last_event_ts: int = 0
    last_event_id: str = ""
    pending: Pending = NO_PENDING
    recent_ids: RecentEventIds = NO_RECENT_IDS
    shown: tuple[str, ...] = ()


def _join(ids: tuple[str, ...]) -> bytes:
    return _NUL.join(ids).encode("utf-8")


def pack_user_value(blob: bytes, state: RefreshState) -> bytes:
    """The stored form of a user's value (see the module docstring)."""
    pending = state.pending
    event_id = state.last_event_id.encode("utf-8")
    recent = state.recent_ids.packed
    n, m = len(pending.event_ts), len(pending.items)
    items, shown = _join(pending.items), _join(state.shown)
    return b"".join((
        _HEAD.pack(_MAGIC, state.seq, state.last_refresh_ms, state.last_event_ts,
                   state.timer_pending, n, m, len(state.shown), len(event_id), len(recent),
                   len(blob)),
        blob, recent,
        struct.pack(f"<{n}q{n}q{m}d", *pending.event_ts, *pending.ingest_ts, *pending.weights),
        event_id, struct.pack("<I", len(items)), items, shown,
    ))


def unpack_user_value(stored: bytes) -> tuple[bytes, RefreshState]:
    """Inverse of :func:`pack_user_value`; ``ValueError`` on any other bytes."""
    if stored[:3] != _MAGIC:
        raise ValueError("not a freshrec user value (bad magic)")
    (_, seq, last_refresh_ms, last_event_ts, timer_pending, n, m, n_shown, id_len, recent_len,
     blob_len) = _HEAD.unpack_from(stored)
    off = _HEAD.size
    blob = stored[off:off + blob_len]
    off += blob_len
    recent = stored[off:off + recent_len]
    off += recent_len
    cols = struct.unpack_from(f"<{n}q{n}q{m}d", stored, off)
    off += 16 * n + 8 * m
    event_id = stored[off:off + id_len].decode("utf-8")
    off += id_len
    (items_len,) = struct.unpack_from("<I", stored, off)
    off += 4
    items = tuple(stored[off:off + items_len].decode("utf-8").split(_NUL)) if m else ()
    shown = tuple(stored[off + items_len:].decode("utf-8").split(_NUL)) if n_shown else ()
    if len(items) != m or len(shown) != n_shown:
        raise ValueError("corrupt freshrec user value (id count)")
    pending = Pending(items, cols[:n], cols[n:2 * n], cols[2 * n:]) if n else NO_PENDING
    return blob, RefreshState(seq, last_refresh_ms, bool(timer_pending), last_event_ts,
                              event_id, pending,
                              RecentEventIds(recent) if recent else NO_RECENT_IDS, shown)
