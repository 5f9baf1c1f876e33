"""The model's math as pure functions on plain state (shared by the job and replay).

The PyFlink job splits learning across operators: the user-keyed operator calls
:func:`user_step` (it reads item vectors from its local :class:`ItemReplica` and emits
:class:`ItemGradient` messages keyed by item), the item-keyed operator calls
:func:`apply_item_gradient`, and list refreshes call :func:`recommend_for_user`. The
in-memory :class:`~online_models.model.FreshRecModel` is a thin composition of the same
functions, applying item gradients to its replica at once.

The model is an FPMC / item2vec-style factorisation trained with a pairwise (BPR) loss:
the query of a user is ``user_weight * p_u + sum_j c_j q_{h_j}`` over the most recent
items ``h_j`` (recency-weighted), and an item scores ``query . q_i + b_i + pop_weight *
log trend_i``, plus a recency bonus for items in the recent history.

>>> from online_models.config import ModelConfig
>>> from online_models.replica import ItemReplica
>>> from online_models.state import UserState
>>> from schemas.events import Event
>>> cfg = ModelConfig(dim=8, seed=0)
>>> rep, rng = ItemReplica(cfg), np.random.default_rng(0)
>>> for i in range(20):
...     _ = rep.upsert(f"i{i}", ts_ms=0)
>>> user = UserState.new("u1", cfg.dim, cfg.seed)
>>> ev = Event("e1", "purchase", 1_000, user_id="u1", item_id="i3")
>>> user2, grads = user_step(user, ev, rep, cfg, rng)
>>> user2.n_events, user2.history[-1][0], "i3" in user2.purchased, user.n_events
(1, 'i3', True, 0)
>>> grads[0].item_id, grads[0].trend_weight, len({g.item_id for g in grads}) == len(grads)
('i3', 5.0, True)
>>> it = apply_item_gradient(new_item_state("i3", cfg), grads[0], cfg, rep)
>>> it.n_events, it.trend > -1e9
(1, True)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from online_models.ann import approximate_top_k, synced_index
from online_models.config import ModelConfig
from online_models.replica import LN2, ItemReplica, logaddexp
from online_models.state import HistoryEntry, ItemGradient, ItemState, UserState
from schemas.events import Event
from schemas.recommendation import ScoredItem

EPS = 1e-6
NEGATIVE_TYPES = frozenset({"unfavorite", "remove_from_cart"})
_VERBS = {
    "view": "viewed", "click": "viewed", "favorite": "saved", "add_to_cart": "added to cart",
    "purchase": "bought",
}


def new_item_state(item_id: str, config: ModelConfig,
                   meta: Mapping[str, Any] | None = None) -> ItemState:
    """A new :class:`ItemState` with the content vector implied by ``config``."""
    m = dict(meta or {})
    return ItemState.new(item_id, config.dim, config.seed, m.get("category"), m.get("brand"),
                         m.get("price"), m.get("available", True) is not False, m.get("title"),
                         config.init_scale)


@lru_cache(maxsize=64)
def context_weights(n: int, decay: float) -> np.ndarray:
    """Normalised weights of the last ``n`` context items, oldest first (most recent largest).

    >>> [round(float(x), 3) for x in context_weights(3, 0.5)]
    [0.143, 0.286, 0.571]
    """
    w = decay ** np.arange(n - 1, -1, -1, dtype=np.float64)
    w = (w / w.sum()).astype(np.float32)
    w.setflags(write=False)
    return w


def lr_schedule(step: float, config: ModelConfig) -> float:
    """Global learning-rate factor ``max(min_lr_scale, 1 / sqrt(1 + step / lr_decay_events))``.

    >>> cfg = ModelConfig()
    >>> lr_schedule(0, cfg), round(lr_schedule(300_000, cfg), 3)
    (1.0, 0.5)
    """
    return max(config.min_lr_scale, 1.0 / math.sqrt(1.0 + step / config.lr_decay_events))


def context_rows(user: UserState, replica: ItemReplica, config: ModelConfig
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Replica rows of the user's last ``context_len`` positive items and their weights."""
    rows: list[int] = []
    index = replica.table.index
    for entry in user.history[::-1]:
        if entry[2] > 0:
            r = index.get(entry[0], -1)
            if r >= 0:
                rows.append(r)
                if len(rows) == config.context_len:
                    break
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    rows.reverse()
    return np.asarray(rows, dtype=np.int64), context_weights(len(rows), config.context_decay)


def query_vector(user: UserState, replica: ItemReplica, config: ModelConfig) -> np.ndarray:
    """The scoring query of a user: long-term vector blended with recent item vectors."""
    rows, w = context_rows(user, replica, config)
    q = config.user_weight * user.vector
    if rows.size:
        q = q + w @ replica.table.vectors[rows]
    return q.astype(np.float32, copy=False)


def _event_meta(event: Event) -> dict[str, Any] | None:
    if event.category is None and event.brand is None and event.price is None:
        return None
    return {"category": event.category, "brand": event.brand, "price": event.price}


def _updated_user(user: UserState, event: Event, weight: float, config: ModelConfig,
                  vector: np.ndarray, acc: float) -> UserState:
    item = event.item_id
    assert item is not None
    history: tuple[HistoryEntry, ...]
    if weight < 0:
        history = tuple(h for h in user.history if h[0] != item)
    else:
        history = (*user.history, (item, event.ts_ms, weight, event.event_type))
        if len(history) > config.history_len:
            history = history[-config.history_len:]
    purchased = user.purchased
    if event.event_type == "purchase" and item not in purchased:
        purchased = purchased | {item}
    seen = user.seen
    if config.exclude == "seen" and item not in seen:  # grows with the catalogue: only if used
        seen = seen | {item}
    vector.setflags(write=False)
    return UserState(user.user_id, vector, acc, history, purchased, seen, user.n_events + 1,
                     max(user.last_ts, event.ts_ms))


_WEIGHTS: dict[int, tuple[ModelConfig, dict[str, float]]] = {}


def _event_weight(config: ModelConfig, event_type: str) -> float:
    """``config.event_weight`` through a per-config table (the getattr costs ~1 us)."""
    hit = _WEIGHTS.get(id(config))
    if hit is None or hit[0] is not config:
        if len(_WEIGHTS) > 64:
            _WEIGHTS.clear()
        names = ("view", "click", "favorite", "add_to_cart", "purchase", "unfavorite",
                 "remove_from_cart")
        hit = _WEIGHTS[id(config)] = (config, {t: config.event_weight(t) for t in names})
    w = hit[1].get(event_type)
    return config.event_weight(event_type) if w is None else w


def _context(user: UserState, index: Mapping[str, int], n_max: int) -> list[int]:
    """Rows of the last ``n_max`` positive history items, oldest first."""
    rows: list[int] = []
    for entry in reversed(user.history):
        if entry[2] > 0:
            r = index.get(entry[0], -1)
            if r >= 0:
                rows.append(r)
                if len(rows) == n_max:
                    break
    rows.reverse()
    return rows


def _user_step(
    user: UserState,
    event: Event,
    replica: ItemReplica,
    config: ModelConfig,
    rng: np.random.Generator,
    lr_scale: float,
) -> tuple[UserState, list[int], np.ndarray, list[float], float, float]:
    """The user-side step; item gradients as ``(rows, grads, bias_grads)`` with ``rows`` a
    list of distinct rows (positive first) and ``grads`` one row each; last, the mean
    pairwise (BPR) loss over the sampled negatives before the step.

    At dims 16-64 numpy's per-call overhead dominates, so the per-negative math runs on
    Python floats and every item gradient (a combination of the query and of the query's
    gradient, plus L2) comes from one small matrix product over the merged rows.
    """
    weight = _event_weight(config, event.event_type)
    item = event.item_id
    assert item is not None
    index = replica.table.index
    pos = index.get(item, -1)
    if pos < 0 or not replica.meta[pos]:
        pos = replica.ensure(item, _event_meta(event), event.ts_ms)
    V = replica.table._data  # rows < len(replica) only are read
    ctx = _context(user, index, config.context_len)
    negs = [r for r in replica.sample_negatives(rng, config.negatives).tolist() if r != pos]
    m = 1 + len(negs)
    T = V[[pos, *negs, *ctx]]
    p = user.vector
    uw = config.user_weight
    if ctx:
        cw = context_weights(len(ctx), config.context_decay)
        q = cw @ T[m:]
        q += uw * p
    else:
        cw = None
        q = uw * p
    s = (T[:m] @ q).tolist()
    bias = replica.bias
    sign = 1.0 if weight >= 0 else -1.0
    # L = -|w| * mean_k log sigmoid(sign * (s_pos - s_neg_k)); g_k = dL/ds_neg_k
    coef = -0.5 * abs(weight) * sign / max(m - 1, 1)
    s0 = s[0] + float(bias[pos])
    tanh = math.tanh
    c = [0.0]
    loss = 0.0
    for j in range(1, m):
        x = sign * (s0 - s[j] - float(bias[negs[j - 1]]))
        g = coef * (1.0 - tanh(0.5 * x))
        c[0] += g
        c.append(-g)
        loss += _softplus(-x)
    grad_q = np.array(c, dtype=np.float32) @ T[:m]
    lr = config.learning_rate * lr_scale
    l2 = config.l2
    grad_p = uw * grad_q
    grad_p += l2 * p
    acc = user.acc + float(grad_p @ grad_p) / p.shape[0]
    new_p = p - np.float32(lr / math.sqrt(acc + EPS)) * grad_p
    # Merge repeated rows (a negative drawn twice, a context item that is also a target):
    # row r gets a_r * q + b_r * grad_q + l2 * V[r].
    slot: dict[int, int] = {}
    coefs: list[list[float]] = []
    first: list[int] = []
    for j, r in enumerate((pos, *negs)):
        k = slot.get(r)
        if k is None:
            slot[r] = len(coefs)
            coefs.append([c[j], 0.0])
            first.append(j)
        else:
            coefs[k][0] += c[j]
    if cw is not None:
        for j, (r, w) in enumerate(zip(ctx, cw.tolist(), strict=True)):
            k = slot.get(r)
            if k is None:
                slot[r] = len(coefs)
                coefs.append([0.0, w])
                first.append(m + j)
            else:
                coefs[k][1] += w
    qg = np.empty((2, q.shape[0]), dtype=np.float32)
    qg[0] = q
    qg[1] = grad_q
    rows = list(slot)
    tol = config.min_step_ratio
    if tol > 0 and len(rows) > 1:
        # Skip rows whose Adagrad step (with the accumulator the replica last saw) would
        # move the vector by less than ``tol`` of its norm: fewer messages, same model.
        # Row r's gradient is a_r q + b_r grad_q (+ a negligible L2 term), so its norm
        # comes from the 2 x 2 Gram matrix of (q, grad_q).
        (qq, qgq), (_, gg) = (qg @ qg.T).tolist()
        acc_r = replica.table._acc[rows].tolist()
        vn = np.einsum("ij,ij->i", T, T).tolist()
        lr2, tol2, inv_d = lr * lr, tol * tol, 1.0 / q.shape[0]
        keep = [0]
        for j in range(1, len(rows)):
            a, b = coefs[j]
            g2 = a * a * qq + 2.0 * a * b * qgq + b * b * gg
            if lr2 * g2 >= tol2 * vn[first[j]] * (acc_r[j] + g2 * inv_d + EPS):
                keep.append(j)
        if len(keep) < len(rows):
            rows = [rows[j] for j in keep]
            coefs = [coefs[j] for j in keep]
            first = [first[j] for j in keep]
    grads = np.array(coefs, dtype=np.float32) @ qg
    grads += np.float32(l2) * (T[first] if len(first) < T.shape[0] else T)
    bias_grads = [a for a, _ in coefs]
    new_user = _updated_user(user, event, weight, config, new_p, acc)
    return new_user, rows, grads, bias_grads, max(weight, 0.0), loss / max(m - 1, 1)


def _softplus(x: float) -> float:
    """``log(1 + e^x)`` without overflow."""
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))


def user_step_arrays(
    user: UserState,
    event: Event,
    replica: ItemReplica,
    config: ModelConfig,
    rng: np.random.Generator,
    lr_scale: float = 1.0,
) -> tuple[UserState, np.ndarray, np.ndarray, np.ndarray, float]:
    """User-side SGD step returning item gradients as arrays (the fast form).

    Returns
    -------
    new_user : UserState
    rows : numpy.ndarray
        Distinct replica rows that receive a gradient (the positive item first).
    grads : numpy.ndarray
        ``len(rows) x dim`` gradients of the loss (L2 included).
    bias_grads : numpy.ndarray
        Gradients of the item biases.
    trend_weight : float
        Weight to add to the positive item's trending counter.
    """
    new_user, rows, grads, bias_grads, trend_w, _ = _user_step(
        user, event, replica, config, rng, lr_scale)
    return (new_user, np.array(rows, dtype=np.int64), grads,
            np.array(bias_grads, dtype=np.float32), trend_w)


def user_step(
    user: UserState,
    event: Event,
    replica: ItemReplica,
    config: ModelConfig,
    rng: np.random.Generator,
    lr_scale: float = 1.0,
) -> tuple[UserState, list[ItemGradient]]:
    """One user-side learning step for an interaction event.

    Parameters
    ----------
    user : UserState
        The user's state before the event (not modified).
    event : Event
        An interaction (``view`` .. ``purchase``); other types return ``(user, [])``.
    replica : ItemReplica
        Local read-only copy of item vectors; an unseen item is added to it from the
        event's metadata, and negatives are drawn from it.
    config : ModelConfig
    rng : numpy.random.Generator
        Source of negatives.
    lr_scale : float
        Global learning-rate schedule factor (see :func:`lr_schedule`).

    Returns
    -------
    (UserState, list[ItemGradient])
        The new user state and one message per touched item (positive first); route
        each by ``item_id`` to :func:`apply_item_gradient`.
    """
    new_user, out, _ = user_step_with_loss(user, event, replica, config, rng, lr_scale)
    return new_user, out


def user_step_with_loss(
    user: UserState,
    event: Event,
    replica: ItemReplica,
    config: ModelConfig,
    rng: np.random.Generator,
    lr_scale: float = 1.0,
) -> tuple[UserState, list[ItemGradient], float | None]:
    """:func:`user_step`, plus the event's pairwise (BPR) loss before the step (``None``
    when nothing was learned), for monitoring."""
    if event.item_id is None or _event_weight(config, event.event_type) == 0:
        return user, [], None
    new_user, rows, grads, bias_grads, trend_w, loss = _user_step(
        user, event, replica, config, rng, lr_scale)
    ids = replica.ids
    ts = event.ts_ms
    out = [ItemGradient(ids[rows[0]], grads[0], bias_grads[0], lr_scale, trend_w, ts,
                        event.category, event.brand, event.price)]
    for j in range(1, len(rows)):
        out.append(ItemGradient(ids[rows[j]], grads[j], bias_grads[j], lr_scale, 0.0, ts))
    return new_user, out, loss


def adagrad_rows(vectors: np.ndarray, acc: np.ndarray, rows: np.ndarray, grads: np.ndarray,
                 lr: float) -> None:
    """Row-wise Adagrad on ``vectors[rows]`` in place (rows must be distinct)."""
    a = acc[rows] + np.einsum("ij,ij->i", grads, grads) / grads.shape[1]
    acc[rows] = a
    vectors[rows] -= (lr / np.sqrt(a + EPS))[:, None] * grads


def apply_item_gradient(item: ItemState, gradient: ItemGradient, config: ModelConfig,
                        replica: ItemReplica | None = None) -> ItemState:
    """Item-side update: row-wise Adagrad step, bias step, trending counter, metadata.

    Parameters
    ----------
    item : ItemState
        The item's state (use :func:`new_item_state` for an unseen item).
    gradient : ItemGradient
        Message from :func:`user_step`.
    config : ModelConfig
    replica : ItemReplica, optional
        Only used for its forward-decay time origin so trends are comparable with the
        replica's; without it the origin is the epoch.

    Returns
    -------
    ItemState
        A new state; publish its vector, bias and trend to the item-embedding changelog.
    """
    lr = config.learning_rate * gradient.lr_scale
    vec, acc = item.vector, item.acc
    grad = gradient.grad
    if grad is not None:
        # float32 accumulator arithmetic, as the replica's row-wise Adagrad does
        acc = float(np.float32(acc + float(grad @ grad) / grad.shape[0]))
        vec = vec - np.float32(lr / math.sqrt(acc + EPS)) * grad
        vec.setflags(write=False)
    bias = float(np.float32(item.bias - lr * gradient.bias_grad))
    trend, n_events = item.trend, item.n_events
    tw = gradient.trend_weight
    if tw > 0:
        log_t = (replica.log_time(gradient.ts_ms) if replica is not None
                 else gradient.ts_ms * LN2 / (config.trend_half_life_s * 1000.0))
        trend = logaddexp(trend, math.log(tw) + log_t)
        n_events += 1
    return ItemState(
        item.item_id, vec, acc, bias, trend, n_events, max(item.last_ts, gradient.ts_ms),
        item.category or gradient.category, item.brand or gradient.brand,
        item.price if item.price is not None else gradient.price, item.available, item.title,
    )


def apply_gradients_to_replica(replica: ItemReplica, rows: np.ndarray, grads: np.ndarray,
                               bias_grads: np.ndarray, trend_weight: float, ts_ms: int,
                               config: ModelConfig, lr_scale: float = 1.0) -> None:
    """The in-process owner's version of :func:`apply_item_gradient` for many rows at once."""
    lr = config.learning_rate * lr_scale
    table = replica.table
    adagrad_rows(table._data, table._acc, rows, grads, lr)
    replica.mark_changed(rows.tolist())
    b = replica.bias[rows] - np.float32(lr) * bias_grads
    replica.bias[rows] = b
    if trend_weight > 0:
        replica.record_trend(int(rows[0]), trend_weight, ts_ms)  # refreshes static of row 0
    t = replica.trend[rows]
    replica.static[rows] = b + config.pop_weight * np.where(np.isfinite(t), t, -50.0)


# -- recommendation ---------------------------------------------------------------------
def recency_bonus(user: UserState, replica: ItemReplica, config: ModelConfig, now_ms: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Rows of recently touched items and their score bonus (decays with event time)."""
    best: dict[int, float] = {}
    hl = config.recency_half_life_s * 1000.0
    index = replica.table.index
    pos_w = config.recency_boost
    for item, ts, w, _ in reversed(user.history):
        if w <= 0:
            continue
        r = index.get(item, -1)
        if r < 0:
            continue
        # Decays with position (most recent first) and event time, but never below half
        # for time (repeat views also come days later); summed over repeated entries (an
        # item touched often is likelier to come back).
        best[r] = best.get(r, 0.0) + pos_w * (0.5 + 0.5 * 2.0 ** (-max(now_ms - ts, 0) / hl))
        pos_w *= config.recency_position_decay
    if not best:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    return (np.fromiter(best.keys(), dtype=np.int64, count=len(best)),
            np.fromiter(best.values(), dtype=np.float32, count=len(best)))


def excluded_items(user: UserState, config: ModelConfig, extra: Iterable[str] = ()
                   ) -> set[str]:
    """Item ids the user must not be shown under ``config.exclude`` plus ``extra``."""
    out = set(extra)
    if config.exclude == "purchased":
        out |= user.purchased
    elif config.exclude == "seen":
        out |= user.seen
    return out


def explain(user: UserState, replica: ItemReplica, rows: np.ndarray, query: np.ndarray,
            recent_rows: np.ndarray, cold_rows: frozenset[int] = frozenset(),
            trending: frozenset[int] = frozenset()) -> list[str]:
    """A human-readable reason per recommended row."""
    V = replica.table.vectors
    ctx_rows, _ = context_rows(user, replica, _CTX_ALL)
    recent = set(recent_rows.tolist())
    ctx_ids = [replica.ids[r] for r in ctx_rows.tolist()]
    verb_of = {h[0]: _VERBS.get(h[3], "viewed") for h in user.history}
    sims = V[rows] @ V[ctx_rows].T if ctx_rows.size and rows.size else None
    out = []
    for j, r in enumerate(rows.tolist()):
        meta = replica.meta[r]
        category = meta.get("category")
        item_id = replica.ids[r]
        if r in recent:
            verb = verb_of.get(item_id, "viewed")
            out.append("you added this to your cart" if verb == "added to cart"
                       else f"you {verb} this recently")
        elif r in cold_rows:
            out.append("popular with shoppers like you")
        elif sims is not None and float(sims[j].max()) > 0.5 * float(V[r] @ V[r]):
            src = ctx_ids[int(np.argmax(sims[j]))]
            out.append(f"similar to {src} you {verb_of.get(src, 'viewed')}")
        elif r in trending or (sims is None and category is None):
            out.append(f"trending in {category}" if category else "popular now")
        elif category is not None:
            out.append(f"trending in {category}")
        else:
            out.append("popular now")
    return out


_CTX_ALL = ModelConfig(context_len=5)
_SCORE_CHUNK = 64  # users per score block in recommend_for_users


def recommend_for_user(
    user: UserState,
    replica: ItemReplica,
    config: ModelConfig,
    k: int | None = None,
    now_ms: int | None = None,
    exclude: Iterable[str] = (),
    bonus_rows: np.ndarray | None = None,
    bonus: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    reasons: bool = True,
) -> list[ScoredItem]:
    """Top-``k`` items for one user from their state and the item replica.

    Parameters
    ----------
    user : UserState
    replica : ItemReplica
    config : ModelConfig
        ``exclude``, ``exploration``, ``diversity_cap``, ``recency_boost`` apply.
    k : int, optional
        List length (default ``config.top_k``).
    now_ms : int, optional
        Event time "now" (default: the user's last event time).
    exclude : iterable of str
        Extra item ids to leave out.
    bonus_rows, bonus : numpy.ndarray, optional
        Extra score per row (e.g. cluster-popular items for cold users).
    rng : numpy.random.Generator, optional
        Needed for exploration slots; without it exploration is off.
    reasons : bool
        Compute reasons (slightly slower); otherwise reason is ``""``.
    """
    k = config.top_k if k is None else k
    if len(replica) == 0 or k <= 0:
        return []
    now = user.last_ts if now_ms is None else now_ms
    q = query_vector(user, replica, config)
    rec_rows, rec_b = recency_bonus(user, replica, config, now)
    ex_ids = excluded_items(user, config, exclude)
    index = replica.table.index
    ex_rows = [index[i] for i in ex_ids if i in index]
    b_rows, b_vals = rec_rows, rec_b
    if bonus_rows is not None and bonus is not None and len(bonus_rows):
        b_rows = np.concatenate((rec_rows, bonus_rows))
        b_vals = np.concatenate((rec_b, bonus.astype(np.float32)))
    n_explore = round(config.exploration * k) if rng is not None else 0
    index = synced_index(replica, config)
    if index is None:
        rows, scores = replica.top_k(q, k, ex_rows, b_rows, b_vals, config.diversity_cap)
    else:
        rows, scores = approximate_top_k(replica, index, q, k, ex_rows, b_rows, b_vals,
                                         config.diversity_cap)
    explore_rows: list[int] = []
    if n_explore and rows.size:
        taken = set(rows.tolist()) | set(ex_rows)
        pool = [r for r in replica.trending_rows(4 * k + n_explore).tolist() if r not in taken]
        if pool:
            pick = rng.choice(len(pool), size=min(n_explore, len(pool)), replace=False)  # type: ignore[union-attr]
            explore_rows = [pool[i] for i in sorted(pick.tolist())]
        keep = max(k - len(explore_rows), 0)
        rows, scores = rows[:keep], scores[:keep]
    why = (explain(user, replica, rows, q, rec_rows,
                   frozenset(bonus_rows.tolist()) if bonus_rows is not None else frozenset())
           if reasons else [""] * rows.shape[0])
    ids = replica.ids
    out = [ScoredItem(ids[r], float(s), w) for r, s, w in zip(rows.tolist(), scores.tolist(), why,
                                                               strict=True)]
    if explore_rows:
        floor = float(scores[-1]) if scores.size else 0.0
        for r in explore_rows:
            cat = replica.meta[r].get("category")
            out.append(ScoredItem(ids[r], floor, f"trending in {cat}" if cat else "popular now"))
    return out


def _bonus_arrays(bonus: tuple[Any, Any]) -> tuple[np.ndarray | None, np.ndarray | None]:
    rows, values = bonus
    if rows is None or values is None:
        return None, None
    return np.asarray(rows, dtype=np.int64), np.asarray(values, dtype=np.float32)


def recommend_for_users(
    users: Sequence[UserState],
    replica: ItemReplica,
    config: ModelConfig,
    k: int | None = None,
    now_ms: int = 0,
    bonuses: Sequence[tuple[np.ndarray | None, np.ndarray | None]] | None = None,
    reasons: bool = True,
) -> list[list[ScoredItem]]:
    """Top-``k`` lists for many users with one matrix product (``Q @ V.T``) and one ``topk``.

    Per-user recency boosts, optional extra ``bonuses`` (rows, values) and exclusions are
    applied sparsely to the score matrix; no exploration and no diversity cap. ``now_ms`` is
    a floor for each user's "now" (their last event time otherwise).
    """
    import torch

    k = config.top_k if k is None else k
    if not users or len(replica) == 0 or k <= 0:
        return [[] for _ in users]
    if synced_index(replica, config) is not None:
        # Large catalogue: a graph search per user beats the batched full scan.
        return [
            recommend_for_user(
                u, replica, config, k, max(u.last_ts, now_ms), (),
                *_bonus_arrays(bonuses[j] if bonuses is not None else (None, None)),
                reasons=reasons)
            for j, u in enumerate(users)]
    queries = np.stack([query_vector(u, replica, config) for u in users])
    tq = torch.from_numpy(queries)
    vt = replica.vectors_tensor().T
    static = replica.static_tensor()  # -inf for unavailable rows
    kk = min(k, static.shape[0])
    index = replica.table.index
    recent: list[np.ndarray] = []
    cold: list[frozenset[int]] = []
    top_s: list[Any] = []
    top_r: list[Any] = []
    # Users go through in chunks: a chunk's score block stays cache-sized, where one
    # users x items matrix (400 MB at 1,000 x 100k) is bound by memory bandwidth.
    for lo in range(0, len(users), _SCORE_CHUNK):
        chunk = users[lo:lo + _SCORE_CHUNK]
        scores = torch.addmm(static, tq[lo:lo + len(chunk)], vt)
        for j, user in enumerate(chunk):
            row = scores[j]
            rows, boost = recency_bonus(user, replica, config, max(user.last_ts, now_ms))
            recent.append(rows)
            if rows.size:
                row.index_add_(0, torch.from_numpy(rows), torch.from_numpy(boost))
            b_rows, b_vals = bonuses[lo + j] if bonuses is not None else (None, None)
            if b_rows is not None and b_vals is not None and len(b_rows):
                row.index_add_(0, torch.from_numpy(np.asarray(b_rows, dtype=np.int64)),
                               torch.from_numpy(np.asarray(b_vals, dtype=np.float32)))
                cold.append(frozenset(np.asarray(b_rows).tolist()))
            else:
                cold.append(frozenset())
            excluded = [index[i] for i in excluded_items(user, config) if i in index]
            if excluded:
                row[torch.tensor(excluded)] = -math.inf
        s, r = torch.topk(scores, kk, dim=1)
        top_s.append(s.numpy())
        top_r.append(r.numpy())
    all_s, all_r = np.concatenate(top_s), np.concatenate(top_r)
    ids = replica.ids
    out = []
    for j, user in enumerate(users):
        s, r = all_s[j], all_r[j]
        finite = np.isfinite(s)
        s, r = s[finite], r[finite]
        why = (explain(user, replica, r, queries[j], recent[j], cold[j]) if reasons
               else [""] * r.shape[0])
        out.append([ScoredItem(ids[a], float(b), c)
                    for a, b, c in zip(r.tolist(), s.tolist(), why, strict=True)])
    return out
