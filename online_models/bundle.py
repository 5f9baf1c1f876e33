"""The bundle learner: one vectorised learning step over many users' events at once.

The job hands a bundle of events (many users, each user's events in order) to
:func:`learn_bundle`, and the in-memory model calls it with a bundle of one event, so the
replay's quality figures are the job's. The step is the pairwise (BPR) factorisation step
of :mod:`online_models.learning`, computed for every event of the bundle with array code at
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

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from online_models.config import ModelConfig
from online_models.covisit import CoVisits, covisit_pairs
from online_models.item_gradients import ItemGradients
from online_models.learning import (
    EPS,
    context_weights,
    event_meta,
    event_weight,
    lr_schedule,
    recent_context,
    updated_user,
)
from online_models.negatives import negative_positions
from online_models.replica import ItemReplica
from online_models.state import UserState
from schemas.events import Event


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
        user's event count (:func:`~online_models.learning.lr_schedule`).
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
        w = event_weight(config, ev.event_type)
        if item is None or uid is None or w == 0:
            continue
        user = work.get(uid)
        if user is None:
            user = users.get(uid) or UserState.new(uid, dim, config.seed)
            slot[uid] = len(slot)
            hashes.append(_user_hash(uid))
        pos = index.get(item, -1)
        if pos < 0 or not replica.meta[pos]:
            pos = replica.ensure(item, event_meta(ev), ev.ts_ms)
        j = len(learned)
        rows = recent_context(user, index, n_ctx)
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
        work[uid] = updated_user(user, ev, w, config, user.vector, user.acc)
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
            meta[r] = event_meta(ev)
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
