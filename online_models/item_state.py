"""Plain per-item state of the model, as the PyFlink job keeps it: :class:`ItemState`, and
:class:`ItemRows` (many states as columns, for the item owner's steps).

States are frozen: every update returns a new object, and ``to_bytes``/``from_bytes``
round-trip them for Flink state.

>>> it = ItemState.new("i1", dim=4, seed=0, category="shoes", price=20.0)
>>> ItemState.from_bytes(it.to_bytes()) == it
True
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from online_models.state import arrays_equal
from online_models.tables import content_vector

# Version 1 (JSON for the ids) is still read, and written when an id contains NUL.
_ITEM_MAGIC = b"FI1"
_ITEM_HEAD = struct.Struct("<3sHqdddqd")  # magic, dim, n_events, acc, bias, trend, ts, price
# Version 2: header, float32 vector, then all ids NUL-joined (UTF-8).
_ITEM_MAGIC2 = b"FI2"
# magic, flags, dim, n_events, acc, bias, trend, last_ts, price
_ITEM_HEAD2 = struct.Struct("<3sBHqdddqd")
# FI3 = FI2 + co-visitation neighbours: their count after the header, float64 weights after
# the vector, their ids after the metadata strings (written only when there are any).
_ITEM_MAGIC3 = b"FI3"
_ITEM_HEAD3 = struct.Struct("<3sBHqdddqdI")
_NUL = "\x00"
# ItemState flags
_F_AVAILABLE, _F_PRICE, _F_CATEGORY, _F_BRAND, _F_TITLE = 1, 2, 4, 8, 16


@dataclass(frozen=True, slots=True, eq=False)
class ItemState:
    """Everything the item-keyed operator keeps for one item.

    Attributes
    ----------
    item_id : str
        The key.
    vector : numpy.ndarray
        Item vector ``q_i`` (float32), used both as scoring target and as sequence context.
    acc : float
        Row-wise Adagrad accumulator.
    bias : float
        Learned item bias.
    trend : float
        Forward-decayed log count: ``log(sum_e w_e * 2 ** (t_e / half_life))``; the
        current trending count is ``exp(trend - t_now * ln2 / half_life)``.
    n_events : int
        Positive interactions seen.
    last_ts : int
        Event time of the last update (ms).
    category, brand, title : str | None
        Metadata.
    price : float | None
        Price.
    available : bool
        Unavailable items are never recommended.
    neighbours : tuple[tuple[str, float], ...]
        Co-visitation neighbours and their summed pair weights
        (:mod:`online_models.covisit`), at most ``covisit_neighbours`` of them.
    """

    item_id: str
    vector: np.ndarray
    acc: float = 0.0
    bias: float = 0.0
    trend: float = float("-inf")
    n_events: int = 0
    last_ts: int = 0
    category: str | None = None
    brand: str | None = None
    price: float | None = None
    available: bool = True
    title: str | None = None
    neighbours: tuple[tuple[str, float], ...] = ()

    @classmethod
    def new(cls, item_id: str, dim: int, seed: int, category: str | None = None,
            brand: str | None = None, price: float | None = None, available: bool = True,
            title: str | None = None, scale: float = 0.3) -> ItemState:
        """A new item with its content vector (hashed from category, brand, price bucket)."""
        vec = content_vector(item_id, dim, seed, category, brand, price, scale)
        vec.setflags(write=False)
        return cls(item_id, vec, category=category, brand=brand, price=price,
                   available=available, title=title)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ItemState):
            return NotImplemented
        return all(
            arrays_equal(getattr(self, f), getattr(other, f)) if f == "vector"
            else getattr(self, f) == getattr(other, f)
            for f in self.__slots__
        )

    __hash__ = None  # type: ignore[assignment]

    def replace(self, **changes: Any) -> ItemState:
        """A copy with some fields changed."""
        return replace(self, **changes)

    @property
    def meta(self) -> dict[str, Any]:
        """Metadata as a dict (what the replica stores beside the vector)."""
        return {"category": self.category, "brand": self.brand, "price": self.price,
                "available": self.available, "title": self.title}

    def to_bytes(self) -> bytes:
        """Compact binary form: header (numbers and flags), float32 vector, then the id and
        the string metadata NUL-joined in UTF-8."""
        cat, brand, title, price = self.category, self.brand, self.title, self.price
        flags = ((_F_AVAILABLE if self.available else 0) | (0 if price is None else _F_PRICE)
                 | (0 if cat is None else _F_CATEGORY) | (0 if brand is None else _F_BRAND)
                 | (0 if title is None else _F_TITLE))
        text = _NUL.join((self.item_id, cat or "", brand or "", title or ""))
        if text.count(_NUL) != 3 or not isinstance(self.available, bool):
            return self._to_bytes_v1()
        vec = self.vector
        nb = self.neighbours
        if nb:
            ids = _NUL.join(i for i, _ in nb)
            if ids.count(_NUL) != len(nb) - 1:
                raise ValueError(f"item {self.item_id!r}: a neighbour id contains NUL")
            return b"".join((
                _ITEM_HEAD3.pack(_ITEM_MAGIC3, flags, vec.shape[0], self.n_events, self.acc,
                                 self.bias, self.trend, self.last_ts,
                                 0.0 if price is None else price, len(nb)),
                vec.astype(np.float32, copy=False).tobytes(),
                np.fromiter((w for _, w in nb), dtype="<f8", count=len(nb)).tobytes(),
                (text + _NUL + ids).encode("utf-8"),
            ))
        return b"".join((
            _ITEM_HEAD2.pack(_ITEM_MAGIC2, flags, vec.shape[0], self.n_events, self.acc,
                             self.bias, self.trend, self.last_ts,
                             0.0 if price is None else price),
            vec.astype(np.float32, copy=False).tobytes(), text.encode("utf-8"),
        ))

    def _to_bytes_v1(self) -> bytes:
        head = _ITEM_HEAD.pack(
            _ITEM_MAGIC, self.vector.shape[0], self.n_events, self.acc, self.bias, self.trend,
            self.last_ts, -1.0 if self.price is None else self.price,
        )
        fields: list[Any] = [self.item_id, self.category, self.brand, self.available,
                             self.title]
        if self.neighbours:
            fields.append([list(nb) for nb in self.neighbours])
        tail = json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return head + self.vector.astype(np.float32, copy=False).tobytes() + tail

    @classmethod
    def from_bytes(cls, blob: bytes) -> ItemState:
        """Inverse of :meth:`to_bytes` (reads every layout)."""
        magic = blob[:3]
        if magic == _ITEM_MAGIC3:
            (_, flags, dim, n_events, acc, bias, trend, last_ts, price,
             n_nb) = _ITEM_HEAD3.unpack_from(blob)
            off = _ITEM_HEAD3.size
            vec = np.frombuffer(blob, dtype=np.float32, count=dim, offset=off)
            off += 4 * dim
            weights = np.frombuffer(blob, dtype="<f8", count=n_nb, offset=off).tolist()
            item_id, cat, brand, title, *ids = blob[off + 8 * n_nb:].decode("utf-8").split(
                _NUL)
            return cls(item_id, vec, acc, bias, trend, n_events, last_ts,
                       cat if flags & _F_CATEGORY else None,
                       brand if flags & _F_BRAND else None,
                       price if flags & _F_PRICE else None, bool(flags & _F_AVAILABLE),
                       title if flags & _F_TITLE else None,
                       tuple(zip(ids, weights, strict=True)))
        if magic == _ITEM_MAGIC2:
            (_, flags, dim, n_events, acc, bias, trend, last_ts,
             price) = _ITEM_HEAD2.unpack_from(blob)
            off = _ITEM_HEAD2.size
            vec = np.frombuffer(blob, dtype=np.float32, count=dim, offset=off)
            item_id, cat, brand, title = blob[off + 4 * dim:].decode("utf-8").split(_NUL)
            return cls(item_id, vec, acc, bias, trend, n_events, last_ts,
                       cat if flags & _F_CATEGORY else None,
                       brand if flags & _F_BRAND else None,
                       price if flags & _F_PRICE else None, bool(flags & _F_AVAILABLE),
                       title if flags & _F_TITLE else None)
        if magic != _ITEM_MAGIC:
            raise ValueError("not a freshrec item state (bad magic)")
        _, dim, n_events, acc, bias, trend, last_ts, price = _ITEM_HEAD.unpack_from(blob)
        off = _ITEM_HEAD.size
        vec = np.frombuffer(blob, dtype=np.float32, count=dim, offset=off)
        item_id, category, brand, available, title, *nb = json.loads(blob[off + 4 * dim:])
        return cls(item_id, vec, acc, bias, trend, n_events, last_ts, category, brand,
                   None if price < 0 else price, available, title,
                   tuple((i, float(w)) for i, w in nb[0]) if nb else ())


class ItemRows:
    """Item states as columns, for the item owner's gradient steps.

    A step changes only the numbers (vector, Adagrad accumulator, bias, trend, event count,
    last time); they are arrays here, and the rest of each state's bytes (flags, price,
    metadata, neighbours) is kept verbatim, so a step neither decodes nor re-encodes it.
    :meth:`blob` gives what :meth:`ItemState.to_bytes` would for the same state.

    >>> it = ItemState.new("i1", dim=4, seed=0, category="shoes", price=20.0)
    >>> rows = ItemRows([it.to_bytes()])
    >>> rows.n_events[0] += 1
    >>> ItemState.from_bytes(rows.blob(0)) == it.replace(n_events=1)
    True
    """

    def __init__(self, blobs: Sequence[bytes]) -> None:
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self._layout: list[tuple[int, int, float, int]] = []  # version, flags, price, n_nb
        self._tails: list[bytes] = []
        numbers: list[tuple[int, float, float, float, int]] = []
        vectors: list[bytes] = []
        width = -1  # bytes of a vector
        for blob in blobs:
            item_id, layout, row_numbers, vector, tail = _item_row(blob)
            if len(vector) != width and width != -1:
                raise ValueError(f"item {item_id!r} has dim {len(vector) // 4}, the others "
                                 f"{width // 4}")
            width = len(vector)
            self.index[item_id] = len(self.ids)
            self.ids.append(item_id)
            self._layout.append(layout)
            self._tails.append(tail)
            numbers.append(row_numbers)
            vectors.append(vector)
        self.vectors = np.frombuffer(b"".join(vectors), dtype=np.float32).reshape(
            len(vectors), max(width // 4, 0)).copy()
        n_events, acc, bias, trend, last_ts = zip(*numbers, strict=True) if numbers else [()] * 5
        self.n_events = np.array(n_events, dtype=np.int64)
        self.acc = np.array(acc, dtype=np.float64)
        self.bias = np.array(bias, dtype=np.float64)
        self.trend = np.array(trend, dtype=np.float64)
        self.last_ts = np.array(last_ts, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def lacks(self, j: int, meta: Mapping[str, Any]) -> bool:
        """Whether row ``j`` lacks a category, brand or price that ``meta`` has."""
        flags = self._layout[j][1]
        return ((meta.get("category") is not None and not flags & _F_CATEGORY)
                or (meta.get("brand") is not None and not flags & _F_BRAND)
                or (meta.get("price") is not None and not flags & _F_PRICE))

    def state(self, j: int) -> ItemState:
        return ItemState.from_bytes(self.blob(j))

    def set_state(self, j: int, state: ItemState) -> None:
        """Replace row ``j`` by ``state`` (same id)."""
        _, self._layout[j], numbers, vector, self._tails[j] = _item_row(state.to_bytes())
        self.vectors[j] = np.frombuffer(vector, dtype=np.float32)
        (self.n_events[j], self.acc[j], self.bias[j], self.trend[j],
         self.last_ts[j]) = numbers

    def neighbours(self, j: int) -> dict[str, float]:
        """Row ``j``'s co-visitation neighbours and their weights, in stored order (see
        :attr:`ItemState.neighbours`)."""
        version, _, _, n_nb = self._layout[j]
        if version == 1:
            return dict(self.state(j).neighbours)
        if not n_nb:
            return {}
        tail = self._tails[j]
        weights = np.frombuffer(tail, dtype="<f8", count=n_nb).tolist()
        ids = tail[8 * n_nb:].decode("utf-8").split(_NUL)[4:]
        return dict(zip(ids, weights, strict=True))

    def set_neighbours(self, j: int, neighbours: Mapping[str, float]) -> None:
        """Replace row ``j``'s neighbours (written in layout ``FI3``, or ``FI2`` if none)."""
        version, flags, price, n_nb = self._layout[j]
        if version == 1:
            self.set_state(j, self.state(j).replace(neighbours=tuple(neighbours.items())))
            return
        tail = self._tails[j]
        text = tail[8 * n_nb:].split(b"\x00", 4)[:4]
        if not neighbours:
            self._layout[j] = (2, flags, price, 0)
            self._tails[j] = b"\x00".join(text)
            return
        ids = _NUL.join(neighbours)
        if ids.count(_NUL) != len(neighbours) - 1:
            raise ValueError(f"item {self.ids[j]!r}: a neighbour id contains NUL")
        self._layout[j] = (3, flags, price, len(neighbours))
        self._tails[j] = b"".join((
            np.fromiter(neighbours.values(), dtype="<f8", count=len(neighbours)).tobytes(),
            b"\x00".join(text), b"\x00", ids.encode("utf-8")))

    def blob(self, j: int) -> bytes:
        """Row ``j`` in its state layout (the one it was read in)."""
        version, flags, price, n_nb = self._layout[j]
        numbers = (int(self.n_events[j]), float(self.acc[j]), float(self.bias[j]),
                   float(self.trend[j]), int(self.last_ts[j]))
        return _pack_item_row(version, flags, price, n_nb, self.vectors[j], numbers,
                              self._tails[j])

    def blobs(self) -> dict[str, bytes]:
        """Every row's bytes by item id."""
        columns = zip(self.ids, self._layout, self.vectors, self.n_events.tolist(),
                      self.acc.tolist(), self.bias.tolist(), self.trend.tolist(),
                      self.last_ts.tolist(), self._tails, strict=True)
        return {item_id: _pack_item_row(*layout, vec, (n, acc, bias, trend, ts), tail)
                for item_id, layout, vec, n, acc, bias, trend, ts, tail in columns}


# What ItemRows keeps of one state: id, (version, flags, price, n_nb), the numbers a step
# changes (n_events, acc, bias, trend, last_ts), the vector's bytes and the rest verbatim.
_ItemRow = tuple[str, tuple[int, int, float, int], tuple[int, float, float, float, int], bytes,
                 bytes]


def _item_row(blob: bytes) -> _ItemRow:
    """The parts of an item state's bytes (any layout) that :class:`ItemRows` keeps."""
    magic = blob[:3]
    if magic == _ITEM_MAGIC3:
        (_, flags, dim, n_events, acc, bias, trend, last_ts, price,
         n_nb) = _ITEM_HEAD3.unpack_from(blob)
        version, off = 3, _ITEM_HEAD3.size
        item_id = blob[off + 4 * dim + 8 * n_nb:].split(b"\x00", 1)[0].decode("utf-8")
    elif magic == _ITEM_MAGIC2:
        (_, flags, dim, n_events, acc, bias, trend, last_ts,
         price) = _ITEM_HEAD2.unpack_from(blob)
        version, off, n_nb = 2, _ITEM_HEAD2.size, 0
        item_id = blob[off + 4 * dim:].split(b"\x00", 1)[0].decode("utf-8")
    else:  # version 1: decoded in full (ids with NUL only), for its id and flags
        state = ItemState.from_bytes(blob)
        _, dim, n_events, acc, bias, trend, last_ts, price = _ITEM_HEAD.unpack_from(blob)
        version, off, n_nb, item_id = 1, _ITEM_HEAD.size, 0, state.item_id
        flags = ((0 if state.category is None else _F_CATEGORY)
                 | (0 if state.brand is None else _F_BRAND)
                 | (0 if state.price is None else _F_PRICE))
    return (item_id, (version, flags, price, n_nb), (n_events, acc, bias, trend, last_ts),
            blob[off:off + 4 * dim], blob[off + 4 * dim:])


def _pack_item_row(version: int, flags: int, price: float, n_nb: int, vector: np.ndarray,
                   numbers: tuple[int, float, float, float, int], tail: bytes) -> bytes:
    n_events, acc, bias, trend, last_ts = numbers
    dim = vector.shape[0]
    if version == 3:
        head = _ITEM_HEAD3.pack(_ITEM_MAGIC3, flags, dim, n_events, acc, bias, trend, last_ts,
                                price, n_nb)
    elif version == 2:
        head = _ITEM_HEAD2.pack(_ITEM_MAGIC2, flags, dim, n_events, acc, bias, trend, last_ts,
                                price)
    else:
        head = _ITEM_HEAD.pack(_ITEM_MAGIC, dim, n_events, acc, bias, trend, last_ts, price)
    return b"".join((head, vector.tobytes(), tail))
