"""Item gradients: what the bundle learner sends an item's owner (:class:`ItemGradients`,
one summed row per item, in a versioned byte layout), and the owner's step that applies
them: to item states as columns (:func:`apply_gradients_to_rows`, the job's item side) or
to a replica that owns its items (:func:`apply_item_gradients`, the in-memory model).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from online_models.config import ModelConfig
from online_models.item_state import ItemRows, ItemState
from online_models.learning import EPS, adagrad_rows, new_item_state
from online_models.replica import ItemReplica, logaddexp


@dataclass(frozen=True, slots=True, eq=False)
class ItemGradients:
    """Summed gradients of a bundle, one row per item, for the items' owner.

    Attributes
    ----------
    item_ids : list[str]
    grads : numpy.ndarray
        ``n x dim`` float32 gradients of the loss, learning-rate schedule applied (the
        owner's Adagrad step uses ``config.learning_rate``), L2 included.
    bias_grads : numpy.ndarray
        float32 bias gradients, schedule applied.
    trend_weight : numpy.ndarray
        float64 positive interaction weight to add to the item's trending counter.
    n_positive : numpy.ndarray
        int32 positive interactions with the item.
    last_ts : numpy.ndarray
        int64 newest event time that touched the item (ms).
    meta : list
        Metadata an event carried for the item (category, brand, price) or ``None``.
    """

    item_ids: list[str]
    grads: np.ndarray
    bias_grads: np.ndarray
    trend_weight: np.ndarray
    n_positive: np.ndarray
    last_ts: np.ndarray
    meta: list[dict[str, Any] | None]

    def __len__(self) -> int:
        return len(self.item_ids)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ItemGradients):
            return NotImplemented
        return (self.item_ids == other.item_ids and self.meta == other.meta and all(
            np.array_equal(getattr(self, f), getattr(other, f))
            for f in ("grads", "bias_grads", "trend_weight", "n_positive", "last_ts")))

    __hash__ = None  # type: ignore[assignment]

    def take(self, rows: Sequence[int] | np.ndarray) -> ItemGradients:
        """The gradients of some rows (e.g. the items of one shard)."""
        idx = np.asarray(rows, dtype=np.int64)
        return ItemGradients([self.item_ids[r] for r in idx.tolist()], self.grads[idx],
                             self.bias_grads[idx], self.trend_weight[idx],
                             self.n_positive[idx], self.last_ts[idx],
                             [self.meta[r] for r in idx.tolist()])

    def to_bytes(self) -> bytes:
        """Layout ``FG1``: header (magic, n, dim), float32 grads, float32 bias grads,
        float64 trend weights, int32 positives, int64 times, then the ids and the metadata
        as one UTF-8 text (``\\x00`` between ids, ``\\x01`` between an id's meta fields)."""
        n, dim = self.grads.shape if self.grads.ndim == 2 else (0, 0)
        text = "\x00".join(
            f"{i}\x01{_meta_text(m)}" for i, m in zip(self.item_ids, self.meta, strict=True))
        return b"".join((
            _GRAD_HEAD.pack(_GRAD_MAGIC, n, dim),
            np.ascontiguousarray(self.grads, dtype="<f4").tobytes(),
            self.bias_grads.astype("<f4").tobytes(), self.trend_weight.astype("<f8").tobytes(),
            self.n_positive.astype("<i4").tobytes(), self.last_ts.astype("<i8").tobytes(),
            text.encode("utf-8"),
        ))

    @classmethod
    def from_bytes(cls, blob: bytes) -> ItemGradients:
        """Inverse of :meth:`to_bytes`; ``ValueError`` on foreign bytes."""
        magic, n, dim = _GRAD_HEAD.unpack_from(blob)
        if magic != _GRAD_MAGIC:
            raise ValueError("not freshrec item gradients (bad magic)")
        off = _GRAD_HEAD.size
        cols = []
        for dtype, count in (("<f4", n * dim), ("<f4", n), ("<f8", n), ("<i4", n), ("<i8", n)):
            arr = np.frombuffer(blob, dtype=dtype, count=count, offset=off)
            off += arr.nbytes
            cols.append(arr.astype(dtype[1:]))
        ids, meta = [], []
        if n:
            for part in blob[off:].decode("utf-8").split("\x00"):
                item_id, _, m = part.partition("\x01")
                ids.append(item_id)
                meta.append(_meta_from_text(m))
        if len(ids) != n:
            raise ValueError("corrupt freshrec item gradients (id count)")
        return cls(ids, cols[0].reshape(n, dim), *cols[1:], meta)


_GRAD_MAGIC = b"FG1"
_GRAD_HEAD = struct.Struct("<3sII")


def _meta_text(meta: Mapping[str, Any] | None) -> str:
    if not meta:
        return ""
    price = meta.get("price")
    return "\x01".join((meta.get("category") or "", meta.get("brand") or "",
                        "" if price is None else repr(float(price))))


def _meta_from_text(text: str) -> dict[str, Any] | None:
    if not text:
        return None
    category, brand, price = text.split("\x01")
    return {"category": category or None, "brand": brand or None,
            "price": float(price) if price else None}


def apply_item_gradients(replica: ItemReplica, gradients: ItemGradients,
                         config: ModelConfig) -> np.ndarray:
    """Apply a bundle's item gradients to a replica that owns its items (the in-memory
    model); returns the rows changed."""
    if not len(gradients):
        return np.zeros(0, dtype=np.int64)
    index = replica.table.index
    rows = np.fromiter((index[i] for i in gradients.item_ids), dtype=np.int64,
                       count=len(gradients))
    lr = config.learning_rate
    table = replica.table
    adagrad_rows(table._data, table._acc, rows, gradients.grads, lr)
    replica.mark_changed(rows.tolist())
    replica.bias[rows] -= np.float32(lr) * gradients.bias_grads
    for r, tw, ts in zip(rows.tolist(), gradients.trend_weight.tolist(),
                         gradients.last_ts.tolist(), strict=True):
        if tw > 0:
            replica.record_trend(r, tw, ts)
    t = replica.trend[rows]
    replica.static[rows] = replica.bias[rows] + config.pop_weight * np.where(
        np.isfinite(t), t, -50.0)
    return rows


def trend_log_epoch(trend_weight: float, ts_ms: int, config: ModelConfig) -> float:
    """``log(w) + ts * ln2 / half_life``: a trending increment on the epoch-based
    forward-decay scale the item owner keeps."""
    return math.log(trend_weight) + ts_ms * math.log(2.0) / (config.trend_half_life_s * 1000.0)


def apply_gradients_to_rows(rows: ItemRows, gradients: ItemGradients,
                            config: ModelConfig) -> None:
    """The item owner's step for a bundle of gradients, in place on ``rows`` (which hold
    every item of ``gradients``): row-wise Adagrad, bias, trending counter (forward-decayed
    from the epoch), event count, and the category, brand or price an event carried for an
    item that had none."""
    if not len(gradients):
        return
    idx = np.fromiter((rows.index[i] for i in gradients.item_ids), dtype=np.int64,
                      count=len(gradients))
    for j, m in zip(idx.tolist(), gradients.meta, strict=True):
        if m and rows.lacks(j, m):
            s = rows.state(j)
            rows.set_state(j, s.replace(
                category=s.category or m.get("category"), brand=s.brand or m.get("brand"),
                price=s.price if s.price is not None else m.get("price")))
    g = gradients.grads
    acc = rows.acc[idx].astype(np.float32) + np.einsum("ij,ij->i", g, g) / np.float32(g.shape[1])
    rows.vectors[idx] -= (np.float32(config.learning_rate)
                          / np.sqrt(acc + np.float32(EPS)))[:, None] * g
    rows.acc[idx] = acc
    rows.bias[idx] = (rows.bias[idx] - config.learning_rate
                      * gradients.bias_grads.astype(np.float64)).astype(np.float32)
    rows.n_events[idx] += gradients.n_positive
    rows.last_ts[idx] = np.maximum(rows.last_ts[idx], gradients.last_ts)
    for j, tw, ts in zip(idx.tolist(), gradients.trend_weight.tolist(),
                         gradients.last_ts.tolist(), strict=True):
        if tw > 0:
            rows.trend[j] = logaddexp(float(rows.trend[j]), trend_log_epoch(tw, ts, config))


def apply_gradients_to_items(items: Mapping[str, ItemState], gradients: ItemGradients,
                             config: ModelConfig) -> dict[str, ItemState]:
    """:func:`apply_gradients_to_rows` over states (items missing from ``items`` start from
    :func:`~online_models.learning.new_item_state`); returns the new states of the items."""
    rows = ItemRows([(items.get(i) or new_item_state(i, config, m)).to_bytes()
                     for i, m in zip(gradients.item_ids, gradients.meta, strict=True)])
    apply_gradients_to_rows(rows, gradients, config)
    return {i: ItemState.from_bytes(b) for i, b in rows.blobs().items()}
