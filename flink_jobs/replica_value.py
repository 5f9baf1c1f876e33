"""An item of user-update's replica as its changelog record last said, in layout ``FR1``.

The job's changelog bundler writes each record it reads in this layout
(``ItemEmbeddingPacker`` in Java), so a replica applies it without parsing JSON; it is also
how user-update's broadcast state held every item in checkpoints before the replica left
state (those still restore). The value is binary (about a third of the record's JSON): a
fixed header, the vector as float32 (the item side's own precision), the neighbours'
weights as float64, then the item id, category, brand, title and the NUL-joined neighbour
ids in UTF-8 (ids never contain control characters: the event codec refuses them). Values
that are the changelog's JSON record are read too.

>>> emb = ItemEmbedding("i1", (0.5, -0.25), 0.1, None, 3, 1700000000000, 0.2, "shoes",
...                     neighbours=(("i2", 1.5), ("i3", 0.5)))
>>> unpack_replica_value(pack_replica_value(emb)) == emb
True
>>> unpack_replica_value(emb.to_bytes()) == emb
True
"""

from __future__ import annotations

import dataclasses
import struct

import numpy as np

from schemas.item_embedding import ItemEmbedding

_MAGIC = b"FR1"
# magic, flags, dim, neighbours, n_events, updated_at, bias, trend, acc, price, then the
# UTF-8 lengths of the item id, category, brand, title and neighbour ids
_HEAD = struct.Struct("<3sBII qq dddd IIIII")
_AVAILABLE, _TREND, _PRICE, _CATEGORY, _BRAND, _TITLE = (1 << b for b in range(6))
_NUL = "\x00"


def _utf8(text: str | None) -> bytes:
    return b"" if text is None else text.encode("utf-8")


def pack_replica_value(emb: ItemEmbedding) -> bytes:
    """The stored form of an item's changelog record (see the module docstring)."""
    flags = ((_AVAILABLE if emb.available else 0) | (_TREND if emb.trend is not None else 0)
             | (_PRICE if emb.price is not None else 0)
             | (_CATEGORY if emb.category is not None else 0)
             | (_BRAND if emb.brand is not None else 0)
             | (_TITLE if emb.title is not None else 0))
    ids, weights = zip(*emb.neighbours, strict=True) if emb.neighbours else ((), ())
    texts = [_utf8(emb.item_id), _utf8(emb.category), _utf8(emb.brand), _utf8(emb.title),
             _NUL.join(ids).encode("utf-8")]
    head = _HEAD.pack(_MAGIC, flags, len(emb.vector), len(ids), emb.n_events,
                      emb.updated_at, emb.bias, emb.trend or 0.0, emb.acc, emb.price or 0.0,
                      *map(len, texts))
    return b"".join((head, np.array(emb.vector, dtype="<f4").tobytes(),
                     np.array(weights, dtype="<f8").tobytes(), *texts))


def is_replica_value(value: bytes) -> bool:
    """Whether ``value`` is in layout ``FR1`` (not a changelog record's JSON)."""
    return value[:3] == _MAGIC


def as_replica_value(value: bytes) -> bytes:
    """``value`` in layout ``FR1``: as it is, or packed from a changelog record's JSON."""
    return value if is_replica_value(value) else pack_replica_value(ItemEmbedding.from_bytes(value))


def unpack_replica_columns(value: bytes) -> tuple[ItemEmbedding, list[str], np.ndarray]:
    """An ``FR1`` value as its record without neighbours, and the neighbours as columns
    (ids, float64 weights): a replica applies them so, without a pair per neighbour."""
    (magic, flags, dim, n, n_events, updated_at, bias, trend, acc, price,
     *lengths) = _HEAD.unpack_from(value, 0)
    if magic != _MAGIC:
        raise ValueError(f"not an FR1 value: {value[:8]!r}")
    off = _HEAD.size
    vector = np.frombuffer(value, "<f4", dim, off).tolist()
    off += 4 * dim
    weights = np.frombuffer(value, "<f8", n, off).astype(np.float64)
    off += 8 * n
    texts = []
    for length in lengths:
        texts.append(value[off:off + length].decode("utf-8"))
        off += length
    if off != len(value):
        raise ValueError(f"FR1 value of {len(value)} bytes, its fields take {off}")
    item_id, category, brand, title, neighbour_ids = texts
    emb = ItemEmbedding(
        item_id=item_id, vector=tuple(vector), bias=bias,
        trend=trend if flags & _TREND else None, n_events=n_events, updated_at=updated_at,
        acc=acc, category=category if flags & _CATEGORY else None,
        brand=brand if flags & _BRAND else None, title=title if flags & _TITLE else None,
        price=price if flags & _PRICE else None, available=bool(flags & _AVAILABLE))
    ids = neighbour_ids.split(_NUL) if n else []
    if len(ids) != n:
        raise ValueError(f"FR1 value of {item_id!r}: {n} neighbour weights, {len(ids)} ids")
    return emb, ids, weights


def unpack_replica_value(value: bytes) -> ItemEmbedding:
    """Inverse of :func:`pack_replica_value`; a JSON changelog record is parsed as one."""
    if not is_replica_value(value):
        return ItemEmbedding.from_bytes(value)
    emb, ids, weights = unpack_replica_columns(value)
    return dataclasses.replace(emb, neighbours=tuple(zip(ids, weights.tolist(), strict=True)))
