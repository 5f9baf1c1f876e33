"""Plain per-user state of the model, as the PyFlink job keeps it (items:
:mod:`online_models.item_state`).

States are frozen: every update returns a new object, and ``to_bytes``/``from_bytes``
round-trip them for Flink ``ValueState[bytes]``.

>>> import numpy as np
>>> u = UserState.new("u1", dim=4, seed=0)
>>> u2 = UserState.from_bytes(u.to_bytes())
>>> u2 == u, u2.user_id, u2.n_events
(True, 'u1', 0)
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from online_models.tables import hashed_vector

# (item_id, ts_ms, weight, event_type)
HistoryEntry = tuple[str, int, float, str]

# Version 1 (JSON for the ids) is still read, and written when an id contains NUL.
_USER_MAGIC = b"FU1"
_USER_HEAD = struct.Struct("<3sHqqd")  # magic, dim, n_events, last_ts, acc
# Version 2: header, float32 vector, history columns, then all ids NUL-joined (UTF-8).
_USER_MAGIC2 = b"FU2"
# magic, dim, n_events, last_ts, acc, n_history, n_purchased, n_seen
_USER_HEAD2 = struct.Struct("<3sHqqdIII")
# Version 3: version 2 with 9-byte history entries (written when that is lossless): the
# time as an int32 offset back from last_ts, the weight as float32.
_USER_MAGIC3 = b"FU3"
_NUL = "\x00"
# History event types by code (append only: the codes are stored in state).
HISTORY_TYPES = ("view", "click", "favorite", "add_to_cart", "purchase", "unfavorite",
                 "remove_from_cart")
_TYPE_CODE = {t: i for i, t in enumerate(HISTORY_TYPES)}
_HIST_COLS: dict[tuple[int, int], struct.Struct] = {}


def _hist_struct(n: int, version: int = 2) -> struct.Struct:
    st = _HIST_COLS.get((n, version))
    if st is None:
        st = _HIST_COLS[n, version] = struct.Struct(
            f"<{n}q{n}d{n}B" if version == 2 else f"<{n}i{n}f{n}B")
    return st


def _compact_history(last_ts: int, ts: tuple[int, ...], ws: tuple[float, ...],
                     codes: list[int]) -> bytes | None:
    """Version 3 history columns, or None when they would not give the same values back."""
    n = len(ts)
    st = _hist_struct(n, 3)
    try:
        cols = st.pack(*(last_ts - t for t in ts), *ws, *codes)
    except (struct.error, OverflowError, TypeError):  # beyond int32/float32, or not a number
        return None
    return cols if st.unpack(cols)[n:2 * n] == ws else None


def arrays_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


@dataclass(frozen=True, slots=True, eq=False)
class UserState:
    """Everything the user-keyed operator keeps for one user.

    Attributes
    ----------
    user_id : str
        The key.
    vector : numpy.ndarray
        Long-term user vector ``p_u`` (float32, read-only).
    acc : float
        Row-wise Adagrad accumulator of ``vector``.
    history : tuple[HistoryEntry, ...]
        Most recent interactions, oldest first: ``(item_id, ts_ms, weight, event_type)``,
        at most ``history_len``.
    purchased, seen : frozenset[str]
        Items bought / interacted with, for exclusions; ``seen`` is only kept under
        ``exclude = "seen"`` (it grows with every distinct item the user touches).
    n_events : int
        Interactions learned from.
    last_ts : int
        Event time of the last interaction (ms), 0 if none.
    """

    user_id: str
    vector: np.ndarray
    acc: float = 0.0
    history: tuple[HistoryEntry, ...] = ()
    purchased: frozenset[str] = field(default_factory=frozenset)
    seen: frozenset[str] = field(default_factory=frozenset)
    n_events: int = 0
    last_ts: int = 0

    @classmethod
    def new(cls, user_id: str, dim: int, seed: int, scale: float = 0.05) -> UserState:
        """A fresh user: a small deterministic vector, empty history."""
        vec = (hashed_vector("user:" + user_id, dim, seed) * np.float32(scale)).astype(np.float32)
        vec.setflags(write=False)
        return cls(user_id, vec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UserState):
            return NotImplemented
        return (
            self.user_id == other.user_id and arrays_equal(self.vector, other.vector)
            and self.acc == other.acc and self.history == other.history
            and self.purchased == other.purchased and self.seen == other.seen
            and self.n_events == other.n_events and self.last_ts == other.last_ts
        )

    __hash__ = None  # type: ignore[assignment]

    def replace(self, **changes: Any) -> UserState:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def to_bytes(self) -> bytes:
        """Compact binary form: a fixed header, the float32 vector, the history's times,
        weights and type codes, then every id NUL-joined in UTF-8.

        The order of the ``purchased`` / ``seen`` ids in the bytes is unspecified (they
        are sets); :meth:`from_bytes` restores equal states.
        """
        hist = self.history
        n = len(hist)
        purchased, seen = self.purchased, self.seen
        magic = _USER_MAGIC3
        try:
            if n:
                ids, ts, ws, types = zip(*hist, strict=True)
                codes = [_TYPE_CODE[t] for t in types]
                compact = _compact_history(self.last_ts, ts, ws, codes)
                if compact is None:
                    magic, cols = _USER_MAGIC2, _hist_struct(n).pack(*ts, *ws, *codes)
                else:
                    cols = compact
            else:
                ids, cols = (), b""
        except (KeyError, struct.error):  # a custom event type or an odd field: v1
            return self._to_bytes_v1()
        text = _NUL.join((self.user_id, *ids, *purchased, *seen))
        if text.count(_NUL) != n + len(purchased) + len(seen):  # an id contains NUL
            return self._to_bytes_v1()
        vec = self.vector
        return b"".join((
            _USER_HEAD2.pack(magic, vec.shape[0], self.n_events, self.last_ts, self.acc,
                             n, len(purchased), len(seen)),
            vec.astype(np.float32, copy=False).tobytes(), cols, text.encode("utf-8"),
        ))

    def _to_bytes_v1(self) -> bytes:
        head = _USER_HEAD.pack(_USER_MAGIC, self.vector.shape[0], self.n_events, self.last_ts,
                               self.acc)
        tail = json.dumps(
            [self.user_id, [list(h) for h in self.history], sorted(self.purchased),
             sorted(self.seen)],
            separators=(",", ":"), ensure_ascii=False,
        ).encode("utf-8")
        return head + self.vector.astype(np.float32, copy=False).tobytes() + tail

    @classmethod
    def from_bytes(cls, blob: bytes) -> UserState:
        """Inverse of :meth:`to_bytes` (reads both layouts); raises ``ValueError`` on
        foreign bytes."""
        magic = blob[:3]
        if magic in (_USER_MAGIC2, _USER_MAGIC3):
            _, dim, n_events, last_ts, acc, n, n_p, n_s = _USER_HEAD2.unpack_from(blob)
            off = _USER_HEAD2.size
            vec = np.frombuffer(blob, dtype=np.float32, count=dim, offset=off)
            off += 4 * dim
            hist_struct = _hist_struct(n, 3 if magic == _USER_MAGIC3 else 2)
            parts = blob[off + hist_struct.size:].decode("utf-8").split(_NUL)
            if len(parts) != 1 + n + n_p + n_s:
                raise ValueError("corrupt freshrec user state (id count)")
            if n:
                cols = hist_struct.unpack_from(blob, off)
                ts = cols[:n] if magic == _USER_MAGIC2 else [last_ts - d for d in cols[:n]]
                history = tuple(zip(parts[1:n + 1], ts, cols[n:2 * n],
                                    map(HISTORY_TYPES.__getitem__, cols[2 * n:]), strict=True))
            else:
                history = ()
            return cls(parts[0], vec, acc, history, frozenset(parts[n + 1:n + 1 + n_p]),
                       frozenset(parts[n + 1 + n_p:]), n_events, last_ts)
        if magic != _USER_MAGIC:
            raise ValueError("not a freshrec user state (bad magic)")
        _, dim, n_events, last_ts, acc = _USER_HEAD.unpack_from(blob)
        off = _USER_HEAD.size
        vec = np.frombuffer(blob, dtype=np.float32, count=dim, offset=off)
        user_id, hist, purchased, seen = json.loads(blob[off + 4 * dim:])
        return cls(
            user_id, vec, acc, tuple((h[0], int(h[1]), float(h[2]), h[3]) for h in hist),
            frozenset(purchased), frozenset(seen), n_events, last_ts,
        )
