"""The bundle learner: one vectorised learning step over many users' events at once.

The job hands a bundle of events (many users, each user's events in order) to
:func:`learn_bundle`, and the in-memory model calls it with a bundle of one event, so the
replay's quality figures are the job's. The step is the pairwise (BPR) factorisation step
of :mod:`online_models.core`, computed for every event of the bundle with array code at
the parameters the bundle started from:

* each event's context (the user's recent items) is built in stream order, so a user's
  second event in a bundle sees the first one in its history;
* negatives are picked from the replica's popularity-weighted pool at positions hashed
  from ``(seed, user, the user's event count)``, so a user's steps do not depend on which
  other users share the bundle (exactly-once replays repeat them);
* each user takes one Adagrad step per event, in order (the bundle is learned in rounds
  of one event per user);
* item gradients are summed per item, learning-rate schedule applied, ready to be sent to
  the item's owner (:class:`ItemGradients`) or applied in place
  (:func:`apply_item_gradients`).

>>> from online_models.config import ModelConfig
>>> from online_models.replica import ItemReplica
>>> from schemas.events import Event
>>> cfg = ModelConfig(dim=8, seed=0)
>>> rep = ItemReplica(cfg)
>>> for i in range(20):
...     _ = rep.upsert(f"i{i}", ts_ms=0)
>>> events = [Event("e1", "view", 1_000, user_id="u1", item_id="i3"),
...           Event("e2", "purchase", 2_000, user_id="u2", item_id="i4"),
...           Event("e3", "view", 3_000, user_id="u1", item_id="i5")]
>>> step = learn_bundle({}, events, rep, cfg)
>>> step.users["u1"].n_events, [h[0] for h in step.users["u1"].history]
(2, ['i3', 'i5'])
>>> "i4" in step.users["u2"].purchased, step.losses.shape
(True, (3,))
>>> g = step.gradients
>>> {i: w for i, w in zip(g.item_ids, g.trend_weight.tolist()) if w > 0}
{'i3': 1.0, 'i4': 5.0, 'i5': 1.0}
>>> ItemGradients.from_bytes(g.to_bytes()) == g
True
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from online_models.config import ModelConfig
from online_models.core import (
    EPS,
    _context,
    _event_meta,
    _event_weight,
    _updated_user,
    adagrad_rows,
    context_weights,
    lr_schedule,
    new_item_state,
)
from online_models.covisit import CoVisits, covisit_pairs
from online_models.replica import ItemReplica, logaddexp
from online_models.state import ItemRows, ItemState, UserState
from schemas.events import Event

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, element-wise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def negative_positions(seed: int, user_hash: np.ndarray, n_events: np.ndarray, k: int,
                       pool_size: int) -> np.ndarray:
    """``len(user_hash) x k`` positions in the negatives pool, a pure function of the seed,
    the user and the user's event count (so a user's draws repeat after a restore).

    >>> a = negative_positions(1, np.array([7, 7]), np.array([0, 1]), 3, 100)
    >>> a.shape, bool((a[0] != a[1]).any()), bool((a < 100).all())
    ((2, 3), True, True)
    >>> bool((negative_positions(1, np.array([7]), np.array([1]), 3, 100) == a[1]).all())
    True
    """
    base = (np.asarray(user_hash, dtype=np.uint64) << np.uint64(32)) ^ np.asarray(
        n_events, dtype=np.uint64) ^ _splitmix64(np.array([seed], dtype=np.uint64))
    draws = _splitmix64(base[:, None] * np.uint64(k + 1) + np.arange(k, dtype=np.uint64))
    return (draws % np.uint64(max(pool_size, 1))).astype(np.int64)


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


@dataclass(frozen=True, slots=True)
class BundleStep:
    """What :func:`learn_bundle` returns.

    Attributes
    ----------
    users : dict[str, UserState]
        New state of every user with a learned event.
    gradients : ItemGradients
        Summed item gradients (positive items first, in event order).
    losses : numpy.ndarray
        Pairwise loss of each learned event before its step (in learning-round order).
    learned : list[Event]
        The events learned from, in order (those with an item and a non-zero weight).
    covisits : CoVisits
        Co-visitation increments of the positive events, for the items' owners.
    """

    users: dict[str, UserState]
    gradients: ItemGradients
    losses: np.ndarray
    learned: list[Event]
    covisits: CoVisits


def _user_hash(user_id: str) -> int:
    return zlib.crc32(user_id.encode("utf-8"))


def learn_bundle(users: Mapping[str, UserState], events: Sequence[Event],
                 replica: ItemReplica, config: ModelConfig, lr_scale: float | None = None
                 ) -> BundleStep:
    """Learning steps over a bundle of interaction events.

    The bundle is learned in rounds: round ``r`` holds every user's ``r``-th event, so each
    user takes one step per event, in order, while the users of a round are learned
    together (one vectorised step). Item gradients are summed over the whole bundle,
    computed at the item vectors the bundle started from.

    Parameters
    ----------
    users : Mapping[str, UserState]
        Current state of the bundle's users; a user missing here starts fresh.
    events : Sequence[Event]
        Events in arrival order. Events without an item or with a zero weight are skipped;
        items unseen by ``replica`` are added to it from the event's metadata.
    replica : ItemReplica
        Item vectors the step reads (it is not changed, except for new items).
    config : ModelConfig
    lr_scale : float, optional
        Learning-rate factor for every event; by default each event's comes from its
        user's event count (:func:`~online_models.core.lr_schedule`).
    """
    rounds: list[list[Event]] = []
    seen: dict[str | None, int] = {}
    for ev in events:
        r = seen.get(ev.user_id, 0)
        seen[ev.user_id] = r + 1
        if r == len(rounds):
            rounds.append([])
        rounds[r].append(ev)
    current = dict(users)
    done = [_learn_round(current, batch, replica, config, lr_scale) for batch in rounds]
    done = [r for r in done if r.learned]
    if not done:
        return BundleStep({}, _no_gradients(config.dim), np.zeros(0), [], CoVisits())
    new_users: dict[str, UserState] = {}
    for r in done:
        new_users.update(r.users)
    cat = np.concatenate
    learned = [ev for r in done for ev in r.learned]
    gradients = _item_gradients(
        replica, config, cat([r.rows for r in done]), cat([r.grads for r in done]),
        cat([r.bias_grads for r in done]), learned, cat([r.pos for r in done]),
        cat([r.weights for r in done]))
    if len(done) > 1:  # learned in rounds: back to arrival order
        order = {id(ev): j for j, ev in enumerate(events)}
        learned = sorted(learned, key=lambda e: order[id(e)])
    covisits = CoVisits()
    for r in done:
        covisits.extend(r.covisits)
    return BundleStep(new_users, gradients, cat([r.losses for r in done]), learned, covisits)


@dataclass(frozen=True, slots=True)
class _Round:
    """One round's new users and raw item gradient rows (summed once per bundle)."""

    users: dict[str, UserState]
    losses: np.ndarray
    learned: list[Event]
    pos: np.ndarray
    weights: np.ndarray
    rows: np.ndarray
    grads: np.ndarray
    bias_grads: np.ndarray
    covisits: CoVisits


def _learn_round(users: dict[str, UserState], events: Sequence[Event],
                 replica: ItemReplica, config: ModelConfig, lr_scale: float | None) -> _Round:
    """One vectorised step over events of distinct users (see :func:`learn_bundle`); the
    round's users are updated in ``users`` too."""
    dim, n_neg, n_ctx = config.dim, config.negatives, config.context_len
    work: dict[str, UserState] = {}
    slot: dict[str, int] = {}
    learned: list[Event] = []
    ub: list[int] = []
    pos_rows: list[int] = []
    weights: list[float] = []
    scales: list[float] = []
    counts: list[int] = []
    hashes: list[int] = []
    ctx = np.zeros((len(events), n_ctx), dtype=np.int64)
    cw = np.zeros((len(events), n_ctx), dtype=np.float32)
    index = replica.table.index
    covisits = CoVisits()
    for ev in events:
        item, uid = ev.item_id, ev.user_id
        w = _event_weight(config, ev.event_type)
        if item is None or uid is None or w == 0:
            continue
        user = work.get(uid)
        if user is None:
            user = users.get(uid) or UserState.new(uid, dim, config.seed)
            slot[uid] = len(slot)
            hashes.append(_user_hash(uid))
        pos = index.get(item, -1)
        if pos < 0 or not replica.meta[pos]:
            pos = replica.ensure(item, _event_meta(ev), ev.ts_ms)
        j = len(learned)
        rows = _context(user, index, n_ctx)
        if rows:
            ctx[j, n_ctx - len(rows):] = rows
            cw[j, n_ctx - len(rows):] = context_weights(len(rows), config.context_decay)
        if w > 0:
            covisit_pairs(user, item, config.covisit_window, covisits)
        learned.append(ev)
        ub.append(slot[uid])
        pos_rows.append(pos)
        weights.append(w)
        counts.append(user.n_events)
        scales.append(lr_schedule(user.n_events, config) if lr_scale is None else lr_scale)
        work[uid] = _updated_user(user, ev, w, config, user.vector, user.acc)
    B = len(learned)
    if B == 0:
        empty = np.zeros(0)
        return _Round({}, empty, [], empty, empty, empty, np.zeros((0, dim)), empty, covisits)
    ctx, cw = ctx[:B], cw[:B]
    ubi = np.asarray(ub, dtype=np.int64)
    pos = np.asarray(pos_rows, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float32)
    scale = np.asarray(scales, dtype=np.float32)
    pool = replica.negative_pool(B * n_neg)
    negs = pool[negative_positions(config.seed, np.asarray(hashes, dtype=np.uint64)[ubi],
                                   np.asarray(counts), n_neg, pool.shape[0])]
    tgt = np.concatenate((pos[:, None], negs), axis=1)
    mask = np.ones(tgt.shape, dtype=np.float32)
    mask[:, 1:] = negs != pos[:, None]
    # Every user's vector as the bundle found it (before any of its events).
    user_ids = list(slot)
    P0 = np.stack([(users.get(u) or work[u]).vector for u in user_ids]).astype(np.float32)
    acc0 = np.fromiter(((users.get(u) or work[u]).acc for u in user_ids), dtype=np.float64,
                       count=len(user_ids))
    V = replica.table._data
    bias = replica.bias
    uw = np.float32(config.user_weight)
    Q = uw * P0[ubi] + np.einsum("bc,bcd->bd", cw, V[ctx])
    T = V[tgt]
    s = np.einsum("bkd,bd->bk", T, Q) + bias[tgt]
    sign = np.where(w >= 0, np.float32(1.0), np.float32(-1.0))
    x = sign[:, None] * (s[:, :1] - s[:, 1:])
    m = mask[:, 1:]
    nneg = np.maximum(m.sum(axis=1), 1.0)
    # dL/ds_neg of L = -|w| * mean_k log sigmoid(sign * (s_pos - s_neg_k))
    g = ((-np.abs(w) * sign / nneg)[:, None] * (0.5 * (1.0 - np.tanh(0.5 * x)))) * m
    losses = (np.logaddexp(0.0, -x) * m).sum(axis=1) / nneg
    c = np.concatenate((g.sum(axis=1, keepdims=True), -g), axis=1).astype(np.float32)
    grad_q = np.einsum("bk,bkd->bd", c, T)
    # users: one Adagrad step each (a round holds each user's one event)
    gP = np.zeros_like(P0)
    np.add.at(gP, ubi, uw * grad_q)
    gP += np.float32(config.l2) * P0
    acc = acc0 + np.einsum("ij,ij->i", gP, gP) / dim
    first_scale = scale[np.unique(ubi, return_index=True)[1]]
    step = (config.learning_rate * first_scale / np.sqrt(acc + EPS)).astype(np.float32)
    newP = P0 - step[:, None] * gP
    new_users: dict[str, UserState] = {}
    for j, u in enumerate(user_ids):
        vec = newP[j]
        vec.setflags(write=False)
        w_u = work[u]  # the history etc. after its events, the vector after the step
        new_users[u] = UserState(u, vec, float(acc[j]), w_u.history, w_u.purchased, w_u.seen,
                                 w_u.n_events, w_u.last_ts)
    users.update(new_users)
    # Item gradient rows: targets (positive and negatives), then context items.
    rows = np.concatenate((tgt.reshape(-1), ctx.reshape(-1)))
    keep = np.concatenate((mask.reshape(-1), cw.reshape(-1))) > 0
    sc = c * scale[:, None]
    grads = np.concatenate(((sc[:, :, None] * Q[:, None, :]).reshape(-1, dim),
                            ((cw * scale[:, None])[:, :, None] * grad_q[:, None, :])
                            .reshape(-1, dim)))
    bgrads = np.concatenate((sc.reshape(-1), np.zeros(ctx.size, dtype=np.float32)))
    return _Round(new_users, losses, learned, pos, w, rows[keep], grads[keep], bgrads[keep],
                  covisits)


def _no_gradients(dim: int) -> ItemGradients:
    return ItemGradients([], np.zeros((0, dim), dtype=np.float32), np.zeros(0, np.float32),
                         np.zeros(0), np.zeros(0, np.int32), np.zeros(0, np.int64), [])


def _item_gradients(replica: ItemReplica, config: ModelConfig, rows: np.ndarray,
                    grads: np.ndarray, bgrads: np.ndarray, learned: list[Event],
                    pos: np.ndarray, w: np.ndarray) -> ItemGradients:
    """Per-item sums of the bundle's item gradient rows; positive items first, then the
    rest in order of first touch; rows whose step would be negligible are left out."""
    dim = config.dim
    # Unique rows in order of first appearance; positives lead each event's rows.
    order = np.concatenate((pos, rows))
    uniq, first = np.unique(order, return_index=True)
    uniq = uniq[np.argsort(first)]
    where = np.empty(int(uniq.max()) + 1, dtype=np.int64)
    where[uniq] = np.arange(uniq.shape[0])
    inv = where[rows]
    n = uniq.shape[0]
    G = np.zeros((n, dim), dtype=np.float32)
    np.add.at(G, inv, grads)
    G += np.float32(config.l2) * replica.table._data[uniq]
    Gb = np.bincount(inv, weights=bgrads, minlength=n).astype(np.float32)
    trend_w = np.zeros(n)
    n_pos = np.zeros(n, dtype=np.int32)
    last_ts = np.zeros(n, dtype=np.int64)
    meta: list[dict[str, Any] | None] = [None] * n
    touched = where[pos]
    for j, ev in enumerate(learned):
        r = int(touched[j])
        if w[j] > 0:
            trend_w[r] += float(w[j])
            n_pos[r] += 1
        last_ts[r] = max(int(last_ts[r]), ev.ts_ms)
        if meta[r] is None:
            meta[r] = _event_meta(ev)
    newest = max(ev.ts_ms for ev in learned)
    last_ts[last_ts == 0] = newest
    positive = np.zeros(n, dtype=bool)
    positive[touched] = True
    tol = config.min_step_ratio
    if tol > 0:
        # An item whose Adagrad step would move it by less than ``tol`` of its norm is left
        # out: fewer messages, the same model.
        acc_r = replica.table._acc[uniq]
        g2 = np.einsum("ij,ij->i", G, G)
        v = replica.table._data[uniq]
        vn = np.einsum("ij,ij->i", v, v)
        lr = config.learning_rate
        big = lr * lr * g2 >= tol * tol * vn * (acc_r + g2 / dim + EPS)
        sel = np.flatnonzero(positive | big)
        if sel.shape[0] < n:
            G, Gb, trend_w, n_pos, last_ts = G[sel], Gb[sel], trend_w[sel], n_pos[sel], \
                last_ts[sel]
            uniq = uniq[sel]
            meta = [meta[r] for r in sel.tolist()]
    ids = replica.ids
    return ItemGradients([ids[r] for r in uniq.tolist()], G, Gb, trend_w, n_pos, last_ts, meta)


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
    :func:`~online_models.core.new_item_state`); returns the new states of the items."""
    rows = ItemRows([(items.get(i) or new_item_state(i, config, m)).to_bytes()
                     for i, m in zip(gradients.item_ids, gradients.meta, strict=True)])
    apply_gradients_to_rows(rows, gradients, config)
    return {i: ItemState.from_bytes(b) for i, b in rows.blobs().items()}
