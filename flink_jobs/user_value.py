"""user-update's keyed value: a user's model state and refresh bookkeeping in one record.

The value is binary (``pack_user_value``, layout ``FV3``): a fixed header, the
``UserState`` bytes, the recent event ids (:mod:`flink_jobs.dedup`), the pending events'
columns, the list last shown as 32-bit hashes of its item ids (:func:`id_hash`: it is only
ever tested for the next event's item, and an id costs ~7-36 bytes), then the last event
id and the pending item ids in UTF-8 (ids never contain control characters: the event
codec refuses them). ``FV2`` values (the shown ids as text, 12 bytes per recent event id)
are still read; ``FV1`` was the per-record job's, and this job does not restore its
savepoints (docs/operations.md).

>>> from schemas.events import Event
>>> pending = Pending().add(Event("e1", "view", 5, user_id="u", item_id="i1"), 7, 1.0)
>>> shown = (id_hash("i2"), id_hash("i3"))
>>> state = RefreshState(seq=3, last_event_id="e1", pending=pending, shown_hashes=shown)
>>> unpack_user_value(pack_user_value(b"user-bytes", state)) == (b"user-bytes", state)
True
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from flink_jobs.dedup import NO_RECENT_IDS, RecentEventIds
from schemas.events import Event

_MAGIC = b"FV3"
# The same fields; the recent ids as RecentEventIds.from_wide reads them, the shown ids as
# NUL-joined text at the end.
_MAGIC_FV2 = b"FV2"
# magic, seq, last_refresh_ms, last_event_ts, timer_pending, pending events, pending items,
# shown items, last_event_id bytes, recent id bytes, user state bytes
_HEAD = struct.Struct("<3sqqqBIIIIII")
_NUL = "\x00"


def id_hash(item_id: str) -> int:
    """The 32-bit hash an item id is kept as in the list last shown (CRC-32: two ids of one
    list of 20 collide with probability ~20^2 / 2^33)."""
    return zlib.crc32(item_id.encode("utf-8"))


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
    last_event_id: str = ""  # of the newest event not yet in a list ("" once it is)
    pending: Pending = NO_PENDING
    recent_ids: RecentEventIds = NO_RECENT_IDS
    shown_hashes: tuple[int, ...] = ()  # id_hash of each item of the list last shown


def pack_user_value(blob: bytes, state: RefreshState) -> bytes:
    """The stored form of a user's value (see the module docstring)."""
    pending = state.pending
    event_id = state.last_event_id.encode("utf-8")
    recent = state.recent_ids.packed
    n, m, k = len(pending.event_ts), len(pending.items), len(state.shown_hashes)
    items = _NUL.join(pending.items).encode("utf-8")
    return b"".join((
        _HEAD.pack(_MAGIC, state.seq, state.last_refresh_ms, state.last_event_ts,
                   state.timer_pending, n, m, k, len(event_id), len(recent), len(blob)),
        blob, recent,
        struct.pack(f"<{n}q{n}q{m}d{k}I", *pending.event_ts, *pending.ingest_ts,
                    *pending.weights, *state.shown_hashes),
        event_id, struct.pack("<I", len(items)), items,
    ))


def unpack_user_value(stored: bytes) -> tuple[bytes, RefreshState]:
    """Inverse of :func:`pack_user_value` (and reads ``FV2``); ``ValueError`` on any other
    bytes."""
    magic = stored[:3]
    if magic not in (_MAGIC, _MAGIC_FV2):
        raise ValueError("not a freshrec user value (bad magic)")
    (_, seq, last_refresh_ms, last_event_ts, timer_pending, n, m, n_shown, id_len, recent_len,
     blob_len) = _HEAD.unpack_from(stored)
    k = n_shown if magic == _MAGIC else 0  # hashes in the columns
    off = _HEAD.size
    blob = stored[off:off + blob_len]
    off += blob_len
    recent = stored[off:off + recent_len]
    off += recent_len
    cols = struct.unpack_from(f"<{n}q{n}q{m}d{k}I", stored, off)
    off += 16 * n + 8 * m + 4 * k
    event_id = stored[off:off + id_len].decode("utf-8")
    off += id_len
    (items_len,) = struct.unpack_from("<I", stored, off)
    off += 4
    items = tuple(stored[off:off + items_len].decode("utf-8").split(_NUL)) if m else ()
    if k:
        shown = cols[2 * n + m:]
    elif n_shown:
        shown = tuple(id_hash(i) for i in stored[off + items_len:].decode("utf-8").split(_NUL))
    else:
        shown = ()
    if len(items) != m or len(shown) != n_shown:
        raise ValueError("corrupt freshrec user value (id count)")
    pending = Pending(items, cols[:n], cols[n:2 * n], cols[2 * n:2 * n + m]) if n else NO_PENDING
    if not recent:
        ids = NO_RECENT_IDS
    else:
        ids = RecentEventIds(recent) if magic == _MAGIC else RecentEventIds.from_wide(recent)
    return blob, RefreshState(seq, last_refresh_ms, bool(timer_pending), last_event_ts,
                              event_id, pending, ids, shown)
