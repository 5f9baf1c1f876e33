"""The model's math as pure functions on plain state (shared by the job and replay).

The model is an FPMC / item2vec-style factorisation trained with a pairwise (BPR) loss:
the query of a user is ``user_weight * p_u + sum_j c_j q_{h_j}`` over the most recent
items ``h_j`` (recency-weighted), and an item scores ``query . q_i + b_i + pop_weight *
log trend_i``, plus a recency bonus for items in the recent history. This module
scores: one user's list (:func:`recommend_for_user`), many users' lists with one matrix
product (:func:`recommend_for_users`) and an item's neighbours (:func:`similar_items`).
Learning is :mod:`online_models.bundle` (with :mod:`online_models.learning`); reasons
are :mod:`online_models.explain`.

>>> from online_models.config import ModelConfig
>>> from online_models.replica import ItemReplica
>>> from online_models.state import UserState
>>> cfg = ModelConfig(dim=8, seed=0)
>>> rep = ItemReplica(cfg)
>>> for i in range(20):
...     _ = rep.upsert(f"i{i}", ts_ms=0)
>>> user = UserState.new("u1", cfg.dim, cfg.seed)
>>> len(recommend_for_user(user, rep, cfg, k=5))
5
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from online_models.ann import approximate_top_k, synced_index
from online_models.blend import (
    SAMPLED_DRAWS,
    BlendSelection,
    ScoreBlend,
    UserFeatures,
    dense_scale,
    learn_blend,
    spread,
    user_features,
    users_features,
)
from online_models.config import ModelConfig
from online_models.explain import explain, explain_many
from online_models.learning import context_rows
from online_models.ranking import select, top_k
from online_models.replica import ItemReplica
from online_models.state import UserState
from schemas.recommendation import ScoredItem


def query_vector(user: UserState, replica: ItemReplica, config: ModelConfig) -> np.ndarray:
    """The scoring query of a user: long-term vector blended with recent item vectors."""
    rows, w = context_rows(user, replica, config)
    q = config.user_weight * user.vector
    if rows.size:
        q = q + w @ replica.table.vectors[rows]
    return q.astype(np.float32, copy=False)


@dataclass(frozen=True, slots=True, eq=False)
class DenseScores:
    """A user's query, the dense score of every item and their spread: one scan."""

    query: np.ndarray
    scores: np.ndarray
    scale: float


def dense_scores(user: UserState, replica: ItemReplica, config: ModelConfig) -> DenseScores:
    """Score every item of the replica for the user (the exact scan)."""
    q = query_vector(user, replica, config)
    scores = replica.scores(q)
    return DenseScores(q, scores, spread(replica, scores))


def excluded_items(user: UserState, config: ModelConfig, extra: Iterable[str] = ()
                   ) -> set[str]:
    """Item ids the user must not be shown under ``config.exclude`` plus ``extra``."""
    out = set(extra)
    if config.exclude == "purchased":
        out |= user.purchased
    elif config.exclude == "seen":
        out |= user.seen
    return out


_SCORE_CHUNK = 64  # users per score block in recommend_for_users


def recommend_for_user(
    user: UserState,
    replica: ItemReplica,
    config: ModelConfig,
    k: int | None = None,
    now_ms: int | None = None,
    exclude: Iterable[str] = (),
    features: UserFeatures | None = None,
    blend: ScoreBlend | BlendSelection | None = None,
    rng: np.random.Generator | None = None,
    reasons: bool = True,
    dense: DenseScores | None = None,
) -> list[ScoredItem]:
    """Top-``k`` items for one user from their state and the item replica.

    Parameters
    ----------
    user : UserState
    replica : ItemReplica
    config : ModelConfig
        ``exclude``, ``exploration``, ``diversity_cap`` apply.
    k : int, optional
        List length (default ``config.top_k``).
    now_ms : int, optional
        Event time "now" (default: the user's last event time).
    exclude : iterable of str
        Extra item ids to leave out.
    features : UserFeatures, optional
        The user's sparse features (:func:`~online_models.blend.user_features`); by default
        those of the history alone (no co-visitation, no cold bonus).
    blend : ScoreBlend, optional
        Feature weights (default: the starting weights).
    rng : numpy.random.Generator, optional
        Needed for exploration slots; without it exploration is off.
    reasons : bool
        Compute reasons (slightly slower); otherwise reason is ``""``.
    dense : DenseScores, optional
        The user's :func:`dense_scores` as the caller already has them (exact scan only).
    """
    k = config.top_k if k is None else k
    if len(replica) == 0 or k <= 0:
        return []
    now = user.last_ts if now_ms is None else now_ms
    if features is None:
        features = user_features(user, replica, config, now)
    blend = blend or ScoreBlend.initial(config)
    ex_ids = excluded_items(user, config, exclude)
    index = replica.table.index
    ex_rows = [index[i] for i in ex_ids if i in index]
    n_explore = round(config.exploration * k) if rng is not None else 0
    index = synced_index(replica, config)
    if index is None:
        d = dense or dense_scores(user, replica, config)
        # select works in place: the scores may be shared (DenseScores).
        rows, scores = select(replica, d.scores.copy(), k, ex_rows, features.rows,
                              blend.bonus(features, d.scale), config.diversity_cap)
    else:
        q = query_vector(user, replica, config)
        rows, scores = approximate_top_k(replica, index, q, k, ex_rows, features.rows,
                                         blend.bonus(features, dense_scale(replica, q)),
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
    why = explain(user, replica, rows, features) if reasons else [""] * rows.shape[0]
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
    features: Sequence[UserFeatures] | None = None,
    blend: ScoreBlend | BlendSelection | None = None,
    reasons: bool = True,
    queries: Sequence[np.ndarray] | None = None,
) -> list[list[ScoredItem]]:
    """Top-``k`` lists for many users with one matrix product (``Q @ V.T``) and one ``topk``.

    Each user's sparse blend bonus (``features``, by default the history alone) and
    exclusions are applied sparsely to the score matrix; no exploration and no diversity
    cap. ``now_ms`` is a floor for each user's "now" (their last event time otherwise).
    ``queries``: the users' :func:`query_vector` if the caller has them.
    """
    import torch

    k = config.top_k if k is None else k
    if not users or len(replica) == 0 or k <= 0:
        return [[] for _ in users]
    if features is None:
        features = users_features(users, replica, config, [max(u.last_ts, now_ms) for u in users])
    blend = blend or ScoreBlend.initial(config)
    if synced_index(replica, config) is not None:
        # Large catalogue: a graph search per user beats the batched full scan.
        return [recommend_for_user(u, replica, config, k, max(u.last_ts, now_ms), (),
                                   features[j], blend, reasons=reasons)
                for j, u in enumerate(users)]
    queries = np.stack(queries if queries is not None
                       else [query_vector(u, replica, config) for u in users])
    tq = torch.from_numpy(queries)
    vt = replica.vectors_tensor().T
    static = replica.static_tensor()  # -inf for unavailable rows
    kk = min(k, static.shape[0])
    index = replica.table.index
    top_s: list[Any] = []
    top_r: list[Any] = []
    # Users go through in chunks: a chunk's score block stays cache-sized, where one
    # users x items matrix (400 MB at 1,000 x 100k) is bound by memory bandwidth.
    blocked = replica.blocked[:static.shape[0]]
    n_available = static.shape[0] - int(np.count_nonzero(blocked))
    available = None if n_available == static.shape[0] else torch.from_numpy(~blocked)
    for lo in range(0, len(users), _SCORE_CHUNK):
        chunk = users[lo:lo + _SCORE_CHUNK]
        scores = torch.addmm(static, tq[lo:lo + len(chunk)], vt)
        # Each user's spread of dense scores over the available items, before any bonus
        # (population std, as :func:`~online_models.blend.spread` computes it), in two
        # passes: torch's ``std`` along rows costs ~13x a mean and a norm here.
        if n_available > 1:
            avail = scores if available is None else scores[:, available]
            centred = avail - avail.mean(dim=1, keepdim=True)
            spreads = (torch.linalg.vector_norm(centred, dim=1)
                       / math.sqrt(n_available)).tolist()
        else:
            spreads = [1.0] * len(chunk)
        # Every user's bonus and exclusions go in with one scatter each (a torch call per
        # user costs more than the work at a list's few hundred sparse entries), the bonus
        # computed for all of them at once.
        users_b, rows_b, values_b, scales_b, users_x, rows_x = [], [], [], [], [], []
        for j, user in enumerate(chunk):
            f = features[lo + j]
            if f.rows.size:
                users_b.append(np.full(f.rows.shape[0], j, dtype=np.int64))
                rows_b.append(f.rows)
                values_b.append(f.values)
                scales_b.append(np.full(f.rows.shape[0], spreads[j] or 1.0))
            excluded = [index[i] for i in excluded_items(user, config) if i in index]
            users_x += [j] * len(excluded)
            rows_x += excluded
        if rows_b:
            bonus = blend.bonus_of(np.concatenate(values_b), np.concatenate(scales_b))
            scores.index_put_((torch.from_numpy(np.concatenate(users_b)),
                               torch.from_numpy(np.concatenate(rows_b))),
                              torch.from_numpy(bonus), accumulate=True)
        if rows_x:
            scores[torch.tensor(users_x), torch.tensor(rows_x)] = -math.inf
        s, r = torch.topk(scores, kk, dim=1)
        top_s.append(s.numpy())
        top_r.append(r.numpy())
    all_s, all_r = np.concatenate(top_s), np.concatenate(top_r)
    finite = np.isfinite(all_s)
    lists = [(all_s[j][finite[j]], all_r[j][finite[j]]) for j in range(len(users))]
    whys = (explain_many(users, replica, [r for _, r in lists], features) if reasons
            else [[""] * r.shape[0] for _, r in lists])
    ids = replica.ids
    return [list(map(ScoredItem._make, zip([ids[a] for a in r.tolist()], s.tolist(), why,
                                           strict=True)))
            for (s, r), why in zip(lists, whys, strict=True)]


def similar_items(replica: ItemReplica, item_id: str, k: int, config: ModelConfig
                  ) -> list[tuple[str, float]] | None:
    """The ``k`` items that score highest for a query equal to ``item_id``'s vector, best
    first, with their scores (``q_item . v + static``: the model's score for a user whose
    taste is that item); None for an unknown item.

    The same retrieval as :func:`recommend_for_user`: an exact scan, or above
    ``config.ann_min_items`` the approximate index rescored exactly. The item itself and
    unavailable items are left out.

    >>> cfg = ModelConfig(dim=4, seed=0)
    >>> rep = ItemReplica(cfg)
    >>> for i, v in enumerate([[1, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 0, 1, 0], [-1, 0, 0, 0]]):
    ...     _ = rep.upsert(f"i{i}", np.asarray(v, dtype=np.float32))
    >>> [item for item, _ in similar_items(rep, "i0", 2, cfg)]
    ['i1', 'i2']
    >>> similar_items(rep, "nope", 2, cfg) is None
    True
    """
    row = replica.row(item_id)
    if row < 0:
        return None
    query = replica.table._data[row].copy()
    index = synced_index(replica, config)
    if index is None:
        rows, scores = top_k(replica, query, k, exclude_rows=(row,))
    else:
        rows, scores = approximate_top_k(replica, index, query, k, (row,))
    ids = replica.ids
    return [(ids[r], float(s)) for r, s in zip(rows.tolist(), scores.tolist(), strict=True)]


BLEND_CANDIDATES = 50  # the blend learns to rank the event's item among the top this many


def blend_step(blend: BlendSelection, user: UserState, replica: ItemReplica,
               config: ModelConfig, features: UserFeatures, item_row: int,
               dense: DenseScores | None = None) -> None:
    """Test both blends on a user's positive event on ``item_row`` before it is learned:
    rank as :func:`recommend_for_user` would, record which listed the item, then
    :func:`~online_models.blend.learn_blend` each (the sampled one with its drawn rows).
    ``dense``: the user's :func:`dense_scores` as the caller already has them."""
    index = replica.table.index
    excluded = [index[i] for i in excluded_items(user, config) if i in index]
    d = dense or dense_scores(user, replica, config)
    ex = np.asarray(excluded, dtype=np.int64)
    tops = [select(replica, d.scores.copy(), BLEND_CANDIDATES, excluded, features.rows,
                   b.bonus(features, d.scale))[0] for b in (blend.ranked, blend.sampled)]
    blend.record(*(bool(np.any(top[:config.top_k] == item_row)) for top in tops))
    learn_blend(blend.ranked, replica, features, d.query, d.scale, tops[0], item_row, ex)
    learn_blend(blend.sampled, replica, features, d.query, d.scale, tops[1], item_row, ex,
                SAMPLED_DRAWS)
