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

from online_models.config import ModelConfig
from online_models.replica import LN2, ItemReplica
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
    seen = user.seen if item in user.seen else user.seen | {item}
    vector.setflags(write=False)
    return UserState(user.user_id, vector, acc, history, purchased, seen, user.n_events + 1,
                     max(user.last_ts, event.ts_ms))


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
    weight = config.event_weight(event.event_type)
    pos = replica.ensure(event.item_id, _event_meta(event), event.ts_ms)  # type: ignore[arg-type]
    V = replica.table.vectors
    ctx, cw = context_rows(user, replica, config)
    p = user.vector
    q = config.user_weight * p
    if ctx.size:
        q = q + cw @ V[ctx]
    negs = replica.sample_negatives(rng, config.negatives)
    negs = negs[negs != pos]
    target = np.concatenate(([pos], negs))
    T = V[target]
    s = T @ q + replica.bias[target]
    sign = 1.0 if weight >= 0 else -1.0
    x = sign * (s[0] - s[1:])
    # L = -|w| * mean_k log sigmoid(sign * (s_pos - s_neg_k))
    g = (-0.5 * abs(weight) * sign / max(len(negs), 1)) * (1.0 - np.tanh(0.5 * x))
    c = np.empty(target.shape[0], dtype=np.float32)
    c[0] = g.sum()
    c[1:] = -g
    grad_q = c @ T
    lr = config.learning_rate * lr_scale
    l2 = config.l2
    grad_p = config.user_weight * grad_q + l2 * p
    acc = user.acc + float(np.dot(grad_p, grad_p)) / p.shape[0]
    new_p = (p - (lr / math.sqrt(acc + EPS)) * grad_p).astype(np.float32)
    grads = np.outer(c, q)
    if ctx.size:
        rows = np.concatenate((target, ctx))
        grads = np.concatenate((grads, np.outer(cw, grad_q)))
        bias_grads = np.concatenate((c, np.zeros(ctx.shape[0], dtype=np.float32)))
    else:
        rows, bias_grads = target, c
    if len(set(rows.tolist())) != rows.shape[0]:  # merge duplicate rows
        uniq, first, inv = np.unique(rows, return_index=True, return_inverse=True)
        merged = np.zeros((uniq.shape[0], grads.shape[1]), dtype=np.float32)
        np.add.at(merged, inv, grads)
        mb = np.zeros(uniq.shape[0], dtype=np.float32)
        np.add.at(mb, inv, bias_grads)
        order = np.argsort(first, kind="stable")  # keep first-appearance order
        rows, grads, bias_grads = uniq[order], merged[order], mb[order]
    grads = (grads + l2 * V[rows]).astype(np.float32, copy=False)
    new_user = _updated_user(user, event, weight, config, new_p, acc)
    return new_user, rows, grads, bias_grads.astype(np.float32, copy=False), max(weight, 0.0)


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
    if event.item_id is None or config.event_weight(event.event_type) == 0:
        return user, []
    new_user, rows, grads, bias_grads, trend_w = user_step_arrays(
        user, event, replica, config, rng, lr_scale)
    ids = replica.ids
    out = []
    for j, r in enumerate(rows.tolist()):
        first = j == 0
        out.append(ItemGradient(
            ids[r], grads[j], float(bias_grads[j]), lr_scale,
            trend_w if first else 0.0, event.ts_ms,
            event.category if first else None, event.brand if first else None,
            event.price if first else None,
        ))
    return new_user, out


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
    if gradient.grad is not None:
        v = vec.astype(np.float32, copy=True)[None, :]
        a = np.array([acc], dtype=np.float32)
        adagrad_rows(v, a, np.zeros(1, dtype=np.int64), gradient.grad[None, :], lr)
        vec, acc = v[0], float(a[0])
        vec.setflags(write=False)
    bias = float(np.float32(item.bias) - np.float32(lr) * np.float32(gradient.bias_grad))
    trend, n_events = item.trend, item.n_events
    if gradient.trend_weight > 0:
        log_t = (replica.log_time(gradient.ts_ms) if replica is not None
                 else gradient.ts_ms * LN2 / (config.trend_half_life_s * 1000.0))
        trend = float(np.logaddexp(trend, math.log(gradient.trend_weight) + log_t))
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
    n = len(replica)
    adagrad_rows(replica.table._data, replica.table._acc, rows, grads, lr)
    replica.bias[rows] = replica.bias[rows] - np.float32(lr) * bias_grads
    if trend_weight > 0:
        replica.record_trend(int(rows[0]), trend_weight, ts_ms)
    st = replica.static
    t = replica.trend[rows]
    st[rows] = replica.bias[rows] + config.pop_weight * np.where(np.isfinite(t), t, -50.0)
    del n


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
    rows, scores = replica.top_k(q, k, ex_rows, b_rows, b_vals, config.diversity_cap)
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
    queries = np.stack([query_vector(u, replica, config) for u in users])
    scores = replica.scores_many(queries)
    index = replica.table.index
    recent: list[np.ndarray] = []
    for j, user in enumerate(users):
        rows, boost = recency_bonus(user, replica, config, max(user.last_ts, now_ms))
        recent.append(rows)
        if rows.size:
            scores[j, torch.from_numpy(rows)] += torch.from_numpy(boost)
        if bonuses is not None:
            b_rows, b_vals = bonuses[j]
            if b_rows is not None and b_vals is not None and len(b_rows):
                scores[j].index_add_(0, torch.from_numpy(b_rows), torch.from_numpy(b_vals))
        excluded = [index[i] for i in excluded_items(user, config) if i in index]
        if excluded:
            scores[j, torch.tensor(excluded)] = -math.inf
    top_s, top_r = torch.topk(scores, min(k, scores.shape[1]), dim=1)
    ids = replica.ids
    out = []
    for j, user in enumerate(users):
        s, r = top_s[j].numpy(), top_r[j].numpy()
        finite = np.isfinite(s)
        s, r = s[finite], r[finite]
        why = (explain(user, replica, r, queries[j], recent[j]) if reasons
               else [""] * r.shape[0])
        out.append([ScoredItem(ids[a], float(b), c)
                    for a, b, c in zip(r.tolist(), s.tolist(), why, strict=True)])
    return out
