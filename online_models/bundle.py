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
from online_models.covisit import CoVisits
from online_models.item_gradients import ItemGradients
from online_models.learning import (
    EPS,
    context_weights,
    event_meta,
    event_weights,
    lr_schedules,
)
from online_models.negatives import POOL_SIZE, negative_positions
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
    plan = _plan(users, rounds, replica, config, lr_scale)
    if not plan.learned:
        return BundleStep({}, _no_gradients(config.dim), np.zeros(0), [], CoVisits())
    new_users, losses, rows, grads, bgrads = _steps(plan, replica, config)
    learned = plan.learned
    gradients = _item_gradients(replica, config, rows, grads, bgrads, learned, plan.pos,
                                plan.weights)
    if len(plan.bounds) > 1:  # learned in rounds: back to arrival order
        order = {id(ev): j for j, ev in enumerate(events)}
        learned = sorted(learned, key=lambda e: order[id(e)])
    return BundleStep(new_users, gradients, losses, learned, plan.covisits)


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything of a bundle's steps that does not depend on the user vectors, one row
    per learned event in round order: the histories move on whatever the vectors do."""

    learned: list[Event]
    bounds: list[tuple[int, int]]  # each round's slice of the rows
    slots: np.ndarray              # the event's user, a row of p0 / acc0
    user_ids: list[str]
    after: list[_UserWork]         # each user's history after their events
    p0: np.ndarray                 # the users' vectors and accumulators as they came
    acc0: np.ndarray
    pos: np.ndarray
    weights: np.ndarray
    scales: np.ndarray
    targets: np.ndarray            # the positive then the negatives
    mask: np.ndarray               # 0 where a negative is the positive
    ctx: np.ndarray
    cw: np.ndarray
    covisits: CoVisits


class _UserWork:
    """A user's history as the bundle's events move it on (the new :class:`UserState` is
    built once per user, after the step, with its new vector)."""

    __slots__ = ("history", "last_ts", "n_events", "purchased", "seen")

    def __init__(self, user: UserState) -> None:
        self.history = user.history
        self.purchased = user.purchased
        self.seen = user.seen
        self.n_events = user.n_events
        self.last_ts = user.last_ts

    def add(self, event: Event, item: str, weight: float, config: ModelConfig) -> None:
        """One learned event: into the history (a negative one takes its item out), the
        purchases, the seen items (only under ``exclude = "seen"``: it grows with every
        item the user touches) and the count."""
        if weight < 0:
            self.history = tuple(h for h in self.history if h[0] != item)
        else:
            history = (*self.history, (item, event.ts_ms, weight, event.event_type))
            self.history = (history[-config.history_len:] if len(history) > config.history_len
                            else history)
        if event.event_type == "purchase" and item not in self.purchased:
            self.purchased = self.purchased | {item}
        if config.exclude == "seen" and item not in self.seen:
            self.seen = self.seen | {item}
        self.n_events += 1
        if event.ts_ms > self.last_ts:
            self.last_ts = event.ts_ms


def _plan(users: Mapping[str, UserState], rounds: list[list[Event]], replica: ItemReplica,
          config: ModelConfig, lr_scale: float | None) -> _Plan:
    """One pass over the bundle's events in round order (items new to the replica get
    their rows in that order) and the arrays the steps read."""
    dim, n_neg, n_ctx, window = (config.dim, config.negatives, config.context_len,
                                 config.covisit_window)
    table = event_weights(config)
    padded = _padded_context_weights(n_ctx, config.context_decay)
    work: dict[str, _UserWork] = {}
    slot: dict[str, int] = {}
    start: list[UserState] = []  # each user as the bundle found them
    hashes: list[int] = []
    learned: list[Event] = []
    bounds: list[tuple[int, int]] = []
    ub: list[int] = []
    pos_rows: list[int] = []
    weights: list[float] = []
    counts: list[int] = []
    pools: list[np.ndarray] = []
    ctx_rows: list[list[int]] = []
    cw_rows: list[tuple[float, ...]] = []
    index = replica.table.index
    covisits = CoVisits()
    pair_a, pair_b, pair_w, positives = covisits.a, covisits.b, covisits.w, covisits.positives
    for batch in rounds:
        a = len(learned)
        for ev in batch:
            item, uid = ev.item_id, ev.user_id
            w = table.get(ev.event_type)
            if w is None:
                w = config.event_weight(ev.event_type)
            if item is None or uid is None or w == 0:
                continue
            user = work.get(uid)
            if user is None:
                found = users.get(uid) or UserState.new(uid, dim, config.seed)
                user = work[uid] = _UserWork(found)
                slot[uid] = len(slot)
                start.append(found)
                hashes.append(_user_hash(uid))
            pos = index.get(item, -1)
            if pos < 0:
                pos = replica.ensure(item, event_meta(ev), ev.ts_ms)
            elif not replica.meta[pos]:
                meta = event_meta(ev)
                if meta:  # the first event that names the item's category, brand or price
                    replica.ensure(item, meta, ev.ts_ms)
            # One walk back through the history: the context (the last n_ctx positive
            # items the replica knows) and, for a positive event, its co-visitation pairs
            # with the last `window` distinct positive items (weight 1 / distance).
            rows: list[int] = []
            recent: list[str] = []
            need_rows, need_recent = n_ctx, window if w > 0 else 0
            for entry in reversed(user.history):
                if entry[2] <= 0:
                    continue
                other = entry[0]
                if need_rows:
                    r = index.get(other, -1)
                    if r >= 0:
                        rows.append(r)
                        need_rows -= 1
                if need_recent and other not in recent:
                    recent.append(other)
                    need_recent -= 1
                if not (need_rows or need_recent):
                    break
            rows.reverse()
            ctx_rows.append([0] * need_rows + rows)
            cw_rows.append(padded[n_ctx - need_rows])
            if w > 0:
                positives.append(item)
                for dist, other in enumerate(recent, 1):
                    if other != item:
                        pw = 1.0 / dist
                        pair_a += (item, other)
                        pair_b += (other, item)
                        pair_w += (pw, pw)
            learned.append(ev)
            ub.append(slot[uid])
            pos_rows.append(pos)
            weights.append(w)
            counts.append(user.n_events)
            user.add(ev, item, w, config)
        if len(learned) > a:
            bounds.append((a, len(learned)))
            # Drawn round by round: the pool counts its draws and may be redrawn between.
            pools.append(replica.negative_pool((len(learned) - a) * n_neg))
    B = len(learned)
    slots = np.asarray(ub, dtype=np.int64)
    pos = np.asarray(pos_rows, dtype=np.int64)
    n_events = np.asarray(counts)
    at = negative_positions(config.seed, np.asarray(hashes, dtype=np.uint64)[slots],
                            n_events, n_neg, POOL_SIZE)
    negs = np.empty((B, n_neg), dtype=np.int64)
    for (a, b), pool in zip(bounds, pools, strict=True):
        negs[a:b] = pool[at[a:b]]
    targets = np.concatenate((pos[:, None], negs), axis=1)
    mask = np.ones(targets.shape, dtype=np.float32)
    mask[:, 1:] = negs != pos[:, None]
    user_ids = list(slot)
    p0 = (np.stack([u.vector for u in start]).astype(np.float32) if start
          else np.zeros((0, dim), dtype=np.float32))
    acc0 = np.fromiter((u.acc for u in start), dtype=np.float64, count=len(start))
    scales = (lr_schedules(n_events, config) if lr_scale is None
              else np.full(B, lr_scale, dtype=np.float64))
    return _Plan(learned, bounds, slots, user_ids, [work[u] for u in user_ids], p0, acc0, pos,
                 np.asarray(weights, dtype=np.float32), scales.astype(np.float32),
                 targets, mask, np.array(ctx_rows, dtype=np.int64).reshape(B, n_ctx),
                 np.array(cw_rows, dtype=np.float32).reshape(B, n_ctx), covisits)


_PADDED: dict[tuple[int, float], list[tuple[float, ...]]] = {}


def _padded_context_weights(n_ctx: int, decay: float) -> list[tuple[float, ...]]:
    """For each context length ``L``: ``n_ctx`` weights, zeros then the ``L`` of
    :func:`~online_models.learning.context_weights` (float32 values as Python floats)."""
    got = _PADDED.get((n_ctx, decay))
    if got is None:
        got = [(0.0,) * n_ctx] + [
            (0.0,) * (n_ctx - n) + tuple(context_weights(n, decay).tolist())
            for n in range(1, n_ctx + 1)]
        _PADDED[(n_ctx, decay)] = got
    return got


def _steps(plan: _Plan, replica: ItemReplica, config: ModelConfig
           ) -> tuple[dict[str, UserState], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The rounds' vectorised steps: new users, each event's loss, and the item gradient
    rows (row, gradient, bias gradient; targets then context items, round by round)."""
    dim = config.dim
    V = replica.table._data
    uw = np.float32(config.user_weight)
    tgt, ctx, cw, w, mask = plan.targets, plan.ctx, plan.cw, plan.weights, plan.mask
    T_all = V[tgt]
    s_bias = replica.bias[tgt]
    context = np.einsum("bc,bcd->bd", cw, V[ctx])
    sign_all = np.where(w >= 0, np.float32(1.0), np.float32(-1.0))
    m_all = mask[:, 1:]
    nneg_all = np.maximum(m_all.sum(axis=1), 1.0)
    # dL/ds_neg of L = -|w| * mean_k log sigmoid(sign * (s_pos - s_neg_k))
    coef_all = -np.abs(w) * sign_all / nneg_all
    P = plan.p0.copy()
    acc = plan.acc0.copy()
    losses = np.empty(w.shape[0], dtype=np.float32)
    Q_all = np.empty((w.shape[0], dim), dtype=np.float32)
    c_all = np.empty(tgt.shape, dtype=np.float32)
    grad_q_all = np.empty((w.shape[0], dim), dtype=np.float32)
    l2 = np.float32(config.l2)
    for a, b in plan.bounds:
        ub = plan.slots[a:b]  # distinct: a round holds each user's one event
        P_r = P[ub]
        Q = uw * P_r + context[a:b]
        T = T_all[a:b]
        s = np.einsum("bkd,bd->bk", T, Q) + s_bias[a:b]
        sign = sign_all[a:b]
        x = sign[:, None] * (s[:, :1] - s[:, 1:])
        m = m_all[a:b]
        g = (coef_all[a:b][:, None] * (0.5 * (1.0 - np.tanh(0.5 * x)))) * m
        losses[a:b] = (np.logaddexp(0.0, -x) * m).sum(axis=1) / nneg_all[a:b]
        c = np.concatenate((g.sum(axis=1, keepdims=True), -g), axis=1).astype(np.float32)
        grad_q = np.einsum("bk,bkd->bd", c, T)
        # users: one Adagrad step each
        gP = uw * grad_q + l2 * P_r
        acc_r = acc[ub] + np.einsum("ij,ij->i", gP, gP) / dim
        step = (config.learning_rate * plan.scales[a:b] / np.sqrt(acc_r + EPS)
                ).astype(np.float32)
        P[ub] = P_r - step[:, None] * gP
        acc[ub] = acc_r
        Q_all[a:b], c_all[a:b], grad_q_all[a:b] = Q, c, grad_q
    new_users: dict[str, UserState] = {}
    for j, (u, w_u) in enumerate(zip(plan.user_ids, plan.after, strict=True)):
        vec = P[j]
        vec.setflags(write=False)
        new_users[u] = UserState(u, vec, float(acc[j]), w_u.history, w_u.purchased, w_u.seen,
                                 w_u.n_events, w_u.last_ts)
    # Item gradient rows: each round's targets (positive and negatives), then its context
    # items (the order they are summed in).
    scale = plan.scales
    sc = c_all * scale[:, None]
    t_grads = (sc[:, :, None] * Q_all[:, None, :]).reshape(tgt.shape[0], -1, dim)
    c_grads = ((cw * scale[:, None])[:, :, None] * grad_q_all[:, None, :])
    n_c = ctx.shape[1]
    parts_r, parts_g, parts_b, parts_k = [], [], [], []
    for a, b in plan.bounds:
        parts_r += [tgt[a:b].reshape(-1), ctx[a:b].reshape(-1)]
        parts_g += [t_grads[a:b].reshape(-1, dim), c_grads[a:b].reshape(-1, dim)]
        parts_b += [sc[a:b].reshape(-1), np.zeros((b - a) * n_c, dtype=np.float32)]
        parts_k += [mask[a:b].reshape(-1), cw[a:b].reshape(-1)]
    cat = np.concatenate
    keep = cat(parts_k) > 0
    return new_users, losses, cat(parts_r)[keep], cat(parts_g)[keep], cat(parts_b)[keep]


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
    import torch

    # torch's index_add_ sums in row order as np.add.at does, ~4x faster.
    G_t = torch.zeros((n, dim), dtype=torch.float32)
    G_t.index_add_(0, torch.from_numpy(inv), torch.from_numpy(np.ascontiguousarray(grads)))
    G = G_t.numpy()
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
