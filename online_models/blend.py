"""The score of an item for a user: a linear blend of features, its weights learned online.

Features of a candidate item (:data:`FEATURES`):

* ``model``: the factorisation score ``query . q_i + b_i + pop_weight * log trend_i`` over
  its spread across items (computed densely, for every item);
* ``recent_position``, ``recent_count``, ``recent_time``: the item is in the user's recent
  history (1 / (1 + place among distinct recent items), log(1 + times), and
  ``2 ** (-age / recency_half_life_s)``): repeat consumption;
* ``covisit``, ``covisit_last``: co-visitation with the user's recent items and with the
  last one (:mod:`online_models.covisit`), as ``log(1 + 3 s)``;
* ``cold_cluster``: popular in the user's cluster while the user is cold;
* ``new_in_category``: a listed item nobody has interacted with yet (never learned), in a
  category of the user's recent items, the newest first: new products get seen;
* ``similar_new``: the newest never-learned item, among the last few hundred listed, whose
  vector (placed from its text or metadata) is near one of the user's two most recent
  items: ``new_in_category`` for items without a category;
* ``category_trend``: among the 100 trending items of the category of the user's most
  recent item, 1 / (1 + place): what people browsing the same shelf take now;
* ``same_brand``, ``price_near``: a candidate outside the user's history shares the brand
  of the user's most recent item; on its shelf (category), how near its price is to that
  item's (``min/max`` of the two, less its mean over the user's rows of that shelf).
  Zero where the catalogue has no brands or prices; both start at weight 0;
* ``brand_trend``: among the trending items of the ``category_trend`` shelf, those of the
  brand of the user's item that named the shelf, 1 / (1 + place): the brand's other
  products on that shelf become candidates (``same_brand`` alone only reorders those
  other features bring). Starts at weight 0.

All but ``model`` are sparse (non-zero for a few hundred items at most), so ranking stays
one dense pass plus a sparse bonus. The weights start at :data:`INITIAL_WEIGHTS` and are
learned online as a listwise ranker: for each positive event, before it is learned, the
softmax over the user's candidates (the top ones, a spread of the other sparse rows and the
event's item) is pushed towards the event's item with Adagrad (:meth:`ScoreBlend.learn`), so the
blend fits each stream without tuning by hand. Two blends learn side by side
(:class:`BlendSelection`): one ranks the event's item against those rows only, the other
also against rows drawn from the whole catalogue, which lets it weigh the factorisation
more, and adds an :class:`InteractionLayer` to its linear score (features weighed by each
other, which a linear score cannot do); lists use whichever has lately listed more of the
events' items in its top k. Which of the two ranks better depends on
the log (docs/model.md): neither alone serves every one.

>>> import numpy as np
>>> b = ScoreBlend.initial(ModelConfig())
>>> f = np.zeros((3, len(FEATURES)), dtype=np.float32)
>>> f[0, 1] = 1.0    # the event's item is the user's most recent item
>>> f[1:, 0] = 2.0   # two items the factorisation likes
>>> before = b.weights.copy()
>>> for _ in range(50):
...     b.learn(f, 0)
>>> bool(b.weights[1] > before[1]), bool(b.weights[0] < before[0])
(True, True)
>>> ScoreBlend.from_bytes(b.to_bytes()) == b
True
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from online_models.arrays import first_seen
from online_models.config import ModelConfig
from online_models.covisit import CoVisitScores, CoVisitTable, recent_items
from online_models.replica import ItemReplica
from online_models.state import UserState

FEATURES = ("model", "recent_position", "recent_count", "recent_time", "covisit",
            "covisit_last", "cold_cluster", "new_in_category", "similar_new",
            "category_trend", "price_near", "same_brand", "brand_trend")
(MODEL, RECENT_POSITION, RECENT_COUNT, RECENT_TIME, COVISIT, COVISIT_LAST, COLD,
 NEW_IN_CATEGORY, SIMILAR_NEW, CATEGORY_TREND, PRICE_NEAR, SAME_BRAND,
 BRAND_TREND) = range(13)
# Where the online ranker ended on the shared logs, rounded: a start that ranks well
# before it has learned anything (``recent_position`` and ``cold_cluster`` start at the
# settings ``recency_boost`` and ``cluster_weight``). ``category_trend`` starts like
# ``new_in_category``: 0.5 or 1.0 made no difference on REES46 (Recall@20 0.4981 / 0.4979,
# 20 rows). ``price_near``, ``same_brand`` and ``brand_trend`` start at 0: nothing until
# the blend has learned what a catalogue's brands and prices say (0.5 moved no replay by
# over 0.001 for the first two; ``brand_trend`` at 0.5 / 1.0: REES46 0.5223 / 0.5219
# against 0.5227).
INITIAL_WEIGHTS = (1.0, 2.5, 0.5, 0.2, 1.5, 1.5, 0.4, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0)
_NEW_PER_CATEGORY = 16  # never-learned items per category, newest first
_NEW_CATEGORIES = 2  # categories of the user's recent items that get new items
# Trending items of the user's most recent category. 100, not 50: where users are cold,
# a listed item from the shelf's places 50-100 gave the 50 no credit, and the blend learned
# to trust the shelf less (taobao head 0.0530 -> 0.0551; 75: 0.0547, 200: 0.0552; REES46
# 0.5227 -> 0.5226, the other logs within 0.4 %). Its second category as well cost 0.002.
_TRENDING_IN_CATEGORY = 100
# Items of the latest item's brand among the 1,000 most trending of its shelf, 50 at most:
# REES46 0.5165 -> 0.5227 (20 of 200: 0.5217; 50 of all the shelf's items: 0.5227).
_BRAND_POOL = 1000
_BRAND_ROWS = 50
_FRESH_POOL = 512  # the newest rows similar_new looks among (bounded work per list)
_SIMILAR_FROM = 2  # the user's most recent distinct items it compares them with
# Cosine a new item must reach: on the untagged generated log a text-placed item is ~0.7
# from the user's items of its category and ~0 from other categories' items.
_MIN_SIMILARITY = 0.5
_MIN_MODEL_WEIGHT = 0.01  # the dense score keeps breaking ties among sparse-less items
_SCALE_ROWS = 512
_BLEND_SAMPLE = 50  # sparse rows beside the top ones in a blend step
# Catalogue rows drawn into the sampled blend's softmax, and the decay of the selection's
# lead per blend step: it weighs the last ~1,000 steps (0.995, ~200 steps: REES46 0.0001
# and the drift log 0.0009 lower).
SAMPLED_DRAWS = 50
_LEAD_DECAY = 0.999
# Steps both blends are compared on before ``sampled`` may serve: in the job's small test
# shops a few steps' lead handed the lists to a barely learned layer (3 of a user's top 10
# from their category instead of 5 or more).
MIN_STEPS_TO_SWITCH = 200
# Hidden units of the sampled blend's interaction layer: 32 against 16 (tried in a third
# blend), Recall@20 the same to within 0.1 % on five logs, MovieLens 100K's cold users 0.5488
# against 0.5467.
INTERACTION_UNITS = 32
# The layer's steps against the blend's learning rate: 2x against 1x, taobao users +0.4 %,
# rees46, diginetica and the drift log +0.01-0.07 %, MovieLens 100K -0.04 %; 4x cost the
# drift log 1.6 %.
_INTERACTION_STEP = 2.0
_MAGIC = b"FB2"
_SELECTION_HEAD = ">dQI"
_KEPT_MAGIC = b"FS1"


@dataclass(slots=True)
class UserFeatures:
    """The sparse features of one user's candidate rows."""

    rows: np.ndarray          # int64 replica rows
    values: np.ndarray        # float32 len(rows) x len(FEATURES); column ``model`` unused
    # Per row, the place in ``source_ids`` (the user's recent items) of the item its
    # covisit or similar_new comes from; -1: none.
    source: np.ndarray
    source_ids: list[str]

    @staticmethod
    def empty() -> UserFeatures:
        return UserFeatures(np.zeros(0, dtype=np.int64),
                            np.zeros((0, len(FEATURES)), dtype=np.float32),
                            np.zeros(0, dtype=np.int64), [])

    def source_of(self, j: int) -> str | None:
        """The recent item row ``j``'s co-visitation or similarity comes from."""
        s = int(self.source[j])
        return self.source_ids[s] if s >= 0 else None


Cold = tuple[np.ndarray | None, np.ndarray | None]


def user_features(user: UserState, replica: ItemReplica, config: ModelConfig, now_ms: int,
                  covisit: CoVisitTable | None = None, cold: Cold = (None, None)
                  ) -> UserFeatures:
    """Sparse features of a user's candidates (history, co-visitation, cold bonus)."""
    return users_features([user], replica, config, [now_ms], covisit, [cold])[0]


def users_features(users: Sequence[UserState], replica: ItemReplica, config: ModelConfig,
                   now_ms: Sequence[int], covisit: CoVisitTable | None = None,
                   colds: Sequence[Cold] | None = None) -> list[UserFeatures]:
    """:func:`user_features` of many users, the array work done once for all of them.
    Each user's rows: their history's and the new items' first, then co-visited rows they
    lack, then cold-cluster rows they lack."""
    if not users:
        return []
    feats = [_history_features(u, replica, config, t) for u, t in zip(users, now_ms,
                                                                      strict=True)]
    similar = _similar_new(replica, feats)
    cats = [_category_lists(replica, f) for f in feats]
    recents: list[list[str]] = [[] for _ in users]
    cos: Sequence[CoVisitScores | None] = [None] * len(users)
    if covisit is not None and len(covisit):
        recents = [recent_items(u, config.covisit_window) for u in users]
        cos = covisit.scores_many(recents, config.covisit_window)
    colds = colds if colds is not None else [(None, None)] * len(users)
    # Every user's entries, user after user: their feature rows, category rows, co-visited
    # rows, cold rows (each distinct, but the four may share rows); ``*_at``: where each
    # part starts.
    parts: list[np.ndarray] = []
    f_at: list[int] = []
    cat_at: list[int] = []
    co_at: list[int] = []
    cold_at: list[int] = []
    n_entries: list[int] = []
    f_rows = np.fromiter(itertools.chain.from_iterable(feats), dtype=np.int64,
                         count=sum(len(f) for f in feats))
    n = taken = 0
    cat_lists = [c for user_cats in cats for c in user_cats]
    for f, user_cats, co, (c_rows, c_vals) in zip(feats, cats, cos, colds, strict=True):
        begin = n
        f_at.append(n)
        parts.append(f_rows[taken:taken + len(f)])
        taken += len(f)
        n += len(f)
        cat_at.append(n)
        for rows_c, _ in user_cats:
            parts.append(rows_c)
            n += rows_c.shape[0]
        if co is not None:
            co_at.append(n)
            parts.append(co.rows)
            n += co.rows.shape[0]
        if c_rows is not None and c_vals is not None:
            cold_at.append(n)
            parts.append(c_rows)
            n += c_rows.shape[0]
        n_entries.append(n - begin)
    user_e = np.repeat(np.arange(len(users)), n_entries)
    rows_e = np.concatenate(parts)
    # Each distinct (user, row) once, where first met, and each entry's place among them.
    kept, place = first_seen(user_e * (len(replica) + 1) + rows_e,
                             len(users) * (len(replica) + 1))
    rows = rows_e[kept]
    values = np.zeros((rows.shape[0], len(FEATURES)), dtype=np.float32)
    source = np.full(rows.shape[0], -1, dtype=np.int64)
    if f_rows.shape[0]:
        at = np.concatenate([place[a:a + len(f)] for a, f in zip(f_at, feats, strict=True)])
        values[at] = np.array([v for f in feats for v in f.values()], dtype=np.float32)
    if cat_lists:
        sizes = [r.shape[0] for r, _ in cat_lists]
        n_cat = [sum(r.shape[0] for r, _ in user_cats) for user_cats in cats]
        at = np.concatenate([place[a:a + k] for a, k in zip(cat_at, n_cat, strict=True)])
        values[at, np.repeat([c for _, c in cat_lists], sizes)] = np.concatenate(
            [_BY_PLACE[:k] for k in sizes])
    present = [co for co in cos if co is not None]
    if present:
        at = np.concatenate([place[a:a + co.rows.shape[0]]
                             for a, co in zip(co_at, present, strict=True)])
        values[at, COVISIT] = np.log1p(3.0 * np.concatenate([co.total for co in present]))
        values[at, COVISIT_LAST] = np.log1p(3.0 * np.concatenate([co.last for co in present]))
        source[at] = np.concatenate([co.source for co in present])
    cold_rows = [(r, v) for r, v in colds if r is not None and v is not None]
    if cold_rows:
        at = np.concatenate([place[a:a + r.shape[0]]
                             for a, (r, _) in zip(cold_at, cold_rows, strict=True)])
        values[at, COLD] = np.concatenate([v for _, v in cold_rows])
    uk = user_e[kept]
    _shelf_features(replica, feats, uk, rows, values, len(users))
    bounds = np.searchsorted(uk, np.arange(len(users) + 1)).tolist()
    out = []
    for j, (f, sim, recent) in enumerate(zip(feats, similar, recents, strict=True)):
        a, b = bounds[j], bounds[j + 1]
        if a == b:
            out.append(UserFeatures.empty())
            continue
        src = source[a:b]
        if sim is not None:
            i = list(f).index(sim[0])
            if src[i] < 0:
                src[i] = len(recent)
                recent = [*recent, sim[1]]
        out.append(UserFeatures(rows[a:b], values[a:b], src, recent))
    return out


def _shelf_features(replica: ItemReplica, feats: list[dict[int, list[float]]],
                    user_of: np.ndarray, rows: np.ndarray, values: np.ndarray,
                    n_users: int) -> None:
    """``same_brand`` and ``price_near`` of the candidate rows outside each user's own
    history (``user_of``: each row's user; the recent_* features rank the history), next to
    the user's most recent item (the first row of their ``feats``). ``price_near`` is
    ``min/max`` of the two prices within the same category, less its mean over the user's
    rows there: it only orders a shelf by price, so where prices say nothing about taste it
    does not favour the shelf as a whole."""
    latest = np.array([next(iter(f), -1) for f in feats], dtype=np.int64)[user_of]
    other = (latest >= 0) & (values[:, RECENT_POSITION] == 0)
    latest = np.maximum(latest, 0)
    brand = replica.brand_code
    values[:, SAME_BRAND] = other & (brand[rows] >= 0) & (brand[rows] == brand[latest])
    category, price = replica.category_code, replica.price
    p_row, p_latest = price[rows], price[latest]
    shelf = (other & (category[rows] >= 0) & (category[rows] == category[latest])
             & (p_row > 0) & (p_latest > 0))  # NaN: no price
    near = np.exp(-np.abs(np.log(p_row[shelf] / p_latest[shelf])))
    owner = user_of[shelf]
    mean = (np.bincount(owner, weights=near, minlength=n_users)
            / np.maximum(np.bincount(owner, minlength=n_users), 1))
    values[shelf, PRICE_NEAR] = near - mean[owner]


def _history_features(user: UserState, replica: ItemReplica, config: ModelConfig,
                      now_ms: int) -> dict[int, list[float]]:
    """The recent_* features of the rows of the user's positive history, most recent
    first."""
    index = replica.table.index
    feats: dict[int, list[float]] = {}
    hl = config.recency_half_life_s * 1000.0
    place = 0
    for item, ts, w, _ in reversed(user.history):
        if w <= 0:
            continue
        r = index.get(item, -1)
        if r < 0:
            continue
        f = feats.get(r)
        if f is None:
            f = feats[r] = [0.0] * len(FEATURES)
            f[RECENT_POSITION] = 1.0 / (1 + place)
            f[RECENT_TIME] = 2.0 ** (-max(now_ms - ts, 0) / hl)
            place += 1
        f[RECENT_COUNT] += 1.0
    for f in feats.values():
        f[RECENT_COUNT] = math.log1p(f[RECENT_COUNT])
    return feats


def _row(feats: dict[int, list[float]], r: int) -> list[float]:
    """The feature list of row ``r``, created zeroed."""
    f = feats.get(r)
    if f is None:
        f = feats[r] = [0.0] * len(FEATURES)
    return f


# 1 / (1 + place): the value of the rows of a ranked list.
_BY_PLACE = (1.0 / (1.0 + np.arange(max(_NEW_PER_CATEGORY, _TRENDING_IN_CATEGORY,
                                        _BRAND_ROWS)))).astype(np.float32)


def _category_lists(replica: ItemReplica, feats: dict[int, list[float]]
                    ) -> list[tuple[np.ndarray, int]]:
    """A user's ranked category lists, each with its feature column: ``new_in_category``
    for never-learned rows of the categories of the user's history rows,
    ``category_trend`` for the trending rows of the most recent one and ``brand_trend``
    for those of them with the brand of the item that gave it (``feats`` holds the
    history rows in recency order). The replica's cached arrays, not copies: the caller
    turns every user's lists into entries at once."""
    codes: list[int] = []
    latest = -1  # the most recent history row with a category
    for r in feats:
        c = int(replica.category_code[r])
        if c >= 0 and c not in codes:
            if latest < 0:
                latest = r
            codes.append(c)
            if len(codes) == _NEW_CATEGORIES:
                break
    if not codes:
        return []
    out = [(replica.new_rows(c, _NEW_PER_CATEGORY), NEW_IN_CATEGORY) for c in codes]
    # One cached ranking of the shelf serves both: its head is the shelf's trending rows.
    shelf = replica.trending_rows(_BRAND_POOL, replica.categories[codes[0]])
    out.append((shelf[:_TRENDING_IN_CATEGORY], CATEGORY_TREND))
    brand = int(replica.brand_code[latest])
    if brand >= 0:
        out.append((shelf[replica.brand_code[shelf] == brand][:_BRAND_ROWS], BRAND_TREND))
    return out


def _similar_new(replica: ItemReplica, feats: list[dict[int, list[float]]]
                 ) -> list[tuple[int, str] | None]:
    """Per user, ``similar_new`` for the newest never-learned row
    (:meth:`ItemReplica.fresh_rows`) within ``_MIN_SIMILARITY`` cosine of one of the
    user's most recent items (``feats`` holds the history rows in recency order); (that
    row, the recent item's id) or None. One row per list: more cost warm items their
    places (measured)."""
    out: list[tuple[int, str] | None] = [None] * len(feats)
    rows, unit = replica.fresh_rows(_FRESH_POOL)
    recent = [list(itertools.islice(f, _SIMILAR_FROM)) for f in feats]
    cols = [r for rs in recent for r in rs]
    if not rows.shape[0] or not cols:
        return out
    src = replica.table._data[cols]
    sims = unit @ src.T
    sims /= np.maximum(np.sqrt(np.einsum("ij,ij->i", src, src)), np.float32(1e-12))
    # Per user with recent items (their columns start at ``starts``): is any pool row near
    # one of them, and the newest such row (rows run oldest to newest).
    users = [j for j, rs in enumerate(recent) if rs]
    starts = np.cumsum([0] + [len(recent[j]) for j in users[:-1]])
    near = np.logical_or.reduceat(sims >= _MIN_SIMILARITY, starts, axis=1)
    newest = rows.shape[0] - 1 - np.argmax(near[::-1], axis=0)
    for u in np.flatnonzero(near.any(axis=0)).tolist():
        j, i, c = users[u], int(newest[u]), int(starts[u])
        rs = recent[j]
        r = int(rows[i])
        _row(feats[j], r)[SIMILAR_NEW] = 1.0
        out[j] = (r, replica.ids[rs[int(sims[i, c:c + len(rs)].argmax())]])
    return out


def spread(replica: ItemReplica, scores: np.ndarray) -> float:
    """The ``model`` feature's unit: the std of a user's dense scores over every available
    item (a function of the catalogue, not of the order rows arrived in)."""
    s = scores[~replica.blocked[: scores.shape[0]]]
    if s.shape[0] < 2:
        return 1.0
    return float(s.std()) or 1.0


def dense_scale(replica: ItemReplica, query: np.ndarray) -> float:
    """:func:`spread` over the first rows only, for the approximate (HNSW) path, which
    never scores every item."""
    n = min(len(replica), _SCALE_ROWS)
    return spread(replica, replica.table._data[:n] @ query + replica.static[:n])


@dataclass(slots=True, eq=False)
class InteractionLayer:
    """A one-layer ReLU term over the sparse features (every feature but ``model``):
    ``v . (relu(W x + b) - relu(b))``, zero where the features all are, so the items
    without any keep their dense score alone and ranking stays one dense pass plus a sparse
    bonus. It starts at zero (``v = 0``: the blend is linear until it learns otherwise) and
    is learned with the blend's listwise steps (Adagrad, at ``_INTERACTION_STEP`` times the
    blend's learning rate); ``W`` starts at fixed random values (seed 0), so replays repeat.

    >>> layer = InteractionLayer.initial(4)
    >>> x = np.array([[0.0] * 12, [1.0] + [0.0] * 11])
    >>> layer.out(x).tolist()
    [0.0, 0.0]
    >>> layer.learn(x, np.array([-0.5, 0.5]), 0.1)
    >>> out = layer.out(x)
    >>> bool(out[1] > 0), bool(abs(out[0]) < 1e-12)
    (True, True)
    """

    w: np.ndarray       # units x sparse features
    b: np.ndarray       # units
    v: np.ndarray       # units
    acc_w: np.ndarray
    acc_b: np.ndarray
    acc_v: np.ndarray

    @classmethod
    def initial(cls, units: int) -> InteractionLayer:
        n = len(FEATURES) - 1
        w = np.random.default_rng(0).normal(0.0, 1.0 / math.sqrt(n), (units, n))
        b = np.full(units, 0.1)
        v = np.zeros(units)
        return cls(w, b, v, np.full_like(w, 1e-2), np.full_like(b, 1e-2),
                   np.full_like(v, 1e-2))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InteractionLayer) and all(
            np.array_equal(a, b) for a, b in zip(self._arrays(), other._arrays(), strict=True))

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return self.w, self.b, self.v, self.acc_w, self.acc_b, self.acc_v

    def out(self, x: np.ndarray) -> np.ndarray:
        """The term for each row of sparse features ``x`` (rows x 12), in ``x``'s float
        type (a list's rows are float32: 8x faster than float64 at ~15k rows)."""
        t = x.dtype.type
        a = x @ self.w.T.astype(t)
        a += self.b.astype(t)
        np.maximum(a, t(0.0), out=a)
        return a @ self.v.astype(t) - t(np.maximum(self.b, 0.0) @ self.v)

    def learn(self, x: np.ndarray, c: np.ndarray, learning_rate: float) -> None:
        """An Adagrad step up ``sum_i c_i out(x_i)`` (``c``: the softmax's one-hot of the
        taken row less its probabilities; they sum to zero, so ``relu(b)`` drops out)."""
        a = x @ self.w.T + self.b
        d = (c[:, None] * (a > 0)) * self.v  # d(sum c out) / d(W x + b), row by row
        for param, acc, g in ((self.v, self.acc_v, c @ np.maximum(a, 0.0)),
                              (self.w, self.acc_w, d.T @ x), (self.b, self.acc_b, d.sum(axis=0))):
            acc += g * g
            param += learning_rate * g / np.sqrt(acc)

    def to_bytes(self) -> bytes:
        return b"".join(a.astype(">f8").tobytes() for a in self._arrays())

    @classmethod
    def from_bytes(cls, blob: bytes, units: int) -> InteractionLayer:
        n = len(FEATURES) - 1
        sizes = (units * n, units, units, units * n, units, units)
        if len(blob) != 8 * sum(sizes):
            raise ValueError(f"interaction layer of {units} units is {8 * sum(sizes)} bytes, "
                             f"not {len(blob)}")
        out, off = [], 0
        for size in sizes:
            out.append(np.frombuffer(blob, ">f8", size, off).astype(np.float64))
            off += 8 * size
        w, b, v, acc_w, acc_b, acc_v = out
        return cls(w.reshape(units, n), b, v, acc_w.reshape(units, n), acc_b, acc_v)


@dataclass(slots=True, eq=False)
class ScoreBlend:
    """Blend weights (one per feature), their Adagrad accumulators and, optionally, an
    :class:`InteractionLayer` added to the linear score."""

    weights: np.ndarray
    acc: np.ndarray
    learning_rate: float
    interactions: InteractionLayer | None = None

    @classmethod
    def initial(cls, config: ModelConfig, interaction_units: int = 0) -> ScoreBlend:
        w = np.array(INITIAL_WEIGHTS, dtype=np.float64)
        w[RECENT_POSITION], w[COLD] = config.recency_boost, config.cluster_weight
        return cls(w, np.full(len(FEATURES), 1e-2), config.blend_learning_rate,
                   InteractionLayer.initial(interaction_units) if interaction_units else None)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ScoreBlend) and self.learning_rate == other.learning_rate
                and np.array_equal(self.weights, other.weights)
                and np.array_equal(self.acc, other.acc)
                and self.interactions == other.interactions)

    def _sparse_score(self, x: np.ndarray) -> np.ndarray:
        """The blend's score of sparse features ``x`` (every column but ``model``)."""
        z = x @ self.weights[1:]
        return z if self.interactions is None else z + self.interactions.out(x)

    def bonus(self, features: UserFeatures, scale: float) -> np.ndarray:
        """Sparse score added to the dense score at ``features.rows`` so that the sum ranks
        like the blend (the blend divided by the ``model`` weight, in dense units)."""
        return self.bonus_of(features.values, scale)

    def bonus_of(self, values: np.ndarray, scale: float | np.ndarray) -> np.ndarray:
        """:meth:`bonus` of feature rows ``values``, ``scale`` one per row or for all
        (many users' rows in one call)."""
        k = scale / max(float(self.weights[MODEL]), _MIN_MODEL_WEIGHT)
        return (self._sparse_score(values[:, 1:]) * k).astype(np.float32)

    def learn(self, candidates: np.ndarray, target: int) -> None:
        """One listwise step: ``candidates`` (rows x features, ``model`` filled) are
        ranked by the blend; row ``target`` is what the user took."""
        if self.learning_rate <= 0 or candidates.shape[0] < 2:
            return
        z = candidates @ self.weights
        layer = self.interactions
        if layer is not None:
            z = z + layer.out(candidates[:, 1:])
        p = np.exp(z - z.max())
        p /= p.sum()
        if layer is not None:
            c = -p
            c[target] += 1.0
            layer.learn(candidates[:, 1:], c, _INTERACTION_STEP * self.learning_rate)
        g = candidates[target] - p @ candidates
        self.acc += g * g
        self.weights += self.learning_rate * g / np.sqrt(self.acc)
        # Ranking scans the dense score for every item, so its weight stays positive (a
        # negative one would put the least likely items first).
        self.weights[MODEL] = max(self.weights[MODEL], _MIN_MODEL_WEIGHT)

    def to_bytes(self) -> bytes:
        """``FB2``, the feature count, the learning rate, the interaction layer's units (0:
        none), the weights, their accumulators and the layer's arrays (big-endian)."""
        n, layer = len(FEATURES), self.interactions
        return (_MAGIC + struct.pack(">HdH", n, self.learning_rate,
                                     0 if layer is None else layer.v.shape[0])
                + self.weights.astype(">f8").tobytes() + self.acc.astype(">f8").tobytes()
                + (b"" if layer is None else layer.to_bytes()))

    @classmethod
    def from_bytes(cls, blob: bytes) -> ScoreBlend:
        if blob[:3] != _MAGIC:
            raise ValueError(f"not a score blend (magic {blob[:3]!r})")
        n, lr, units = struct.unpack_from(">HdH", blob, 3)
        if n != len(FEATURES):
            raise ValueError(f"score blend has {n} features; this version has {len(FEATURES)}")
        off = 3 + struct.calcsize(">HdH")
        w = np.frombuffer(blob, ">f8", n, off).astype(np.float64)
        acc = np.frombuffer(blob, ">f8", n, off + 8 * n).astype(np.float64)
        layer = (InteractionLayer.from_bytes(blob[off + 16 * n:], units) if units else None)
        return cls(w, acc, lr, layer)


def learn_blend(blend: ScoreBlend, replica: ItemReplica, features: UserFeatures,
                query: np.ndarray, scale: float, candidates: np.ndarray, item_row: int,
                excluded: np.ndarray, draws: int = 0) -> None:
    """The blend's step for a user's positive event on ``item_row``, taken before the event
    is learned. The softmax runs over ``candidates`` (the rows the blend ranks highest for
    the user now), an even spread of ``_BLEND_SAMPLE`` of the user's other sparse rows
    (not ``excluded``: those cannot be listed) and the event's item; ``features`` /
    ``query`` / ``scale`` are the user's as they ranked. The spread matters where many
    items have some co-visitation: among the top rows alone, chosen for their high
    co-visitation, the taken item looks below average, and the blend learned to ignore
    co-visitation (MovieLens 100K, docs/model.md). ``draws`` rows drawn from the catalogue
    (from the event's item and the catalogue's size: replays repeat them) join the softmax:
    against them the taken item's factorisation score stands out, as it does not among the
    rows the blend already ranks highest."""
    at = np.flatnonzero(~np.isin(features.rows, excluded))
    if at.shape[0] > _BLEND_SAMPLE:  # deterministic, so replays repeat
        at = at[np.linspace(0, at.shape[0] - 1, _BLEND_SAMPLE).astype(np.int64)]
    at = np.union1d(at, np.flatnonzero(features.rows == item_row))
    sparse = features.rows[at]
    rows = np.concatenate((sparse, candidates[~np.isin(candidates, sparse)]))
    if draws:
        n = len(replica)
        drawn = np.random.default_rng([item_row, n]).integers(0, n, draws)
        drawn = drawn[~replica.blocked[drawn] & ~np.isin(drawn, rows)
                      & ~np.isin(drawn, excluded)]
        rows = np.concatenate((rows, np.unique(drawn)))
    hit = np.flatnonzero(rows == item_row)
    if hit.shape[0]:
        target = int(hit[0])
    else:  # the taken item has no sparse feature and is not among the top rows
        rows = np.append(rows, item_row)
        target = rows.shape[0] - 1
    F = np.zeros((rows.shape[0], len(FEATURES)), dtype=np.float64)
    F[: sparse.shape[0]] = features.values[at]
    F[:, MODEL] = (replica.table._data[rows] @ query + replica.static[rows]) / scale
    blend.learn(F, target)


@dataclass(slots=True, eq=False)
class BlendSelection:
    """Two score blends learned on the same steps, and the one the lists use: ``ranked``
    learns among the rows it ranks highest, ``sampled`` among those and
    :data:`SAMPLED_DRAWS` rows drawn from the catalogue, with an :class:`InteractionLayer`
    of :data:`INTERACTION_UNITS`. ``lead`` counts, decayed, the steps whose item ``ranked``
    listed in its top k and ``sampled`` did not, less the other way round; ``sampled``
    serves while the lead is below zero, once both have been compared on
    :data:`MIN_STEPS_TO_SWITCH` steps (its layer starts at zero and its drawn rows make
    its first steps noisy: a lead of a few steps must not hand it the lists).

    >>> s = BlendSelection.initial(ModelConfig())
    >>> s.record(ranked_hit=False, sampled_hit=True)
    >>> s.active is s.ranked, s.lead
    (True, -1.0)
    >>> for _ in range(MIN_STEPS_TO_SWITCH):
    ...     s.record(ranked_hit=False, sampled_hit=False)
    >>> s.active is s.sampled, s.steps
    (True, 201)
    """

    ranked: ScoreBlend
    sampled: ScoreBlend
    lead: float = 0.0
    steps: int = 0

    @classmethod
    def initial(cls, config: ModelConfig) -> BlendSelection:
        return cls(ScoreBlend.initial(config),
                   ScoreBlend.initial(config, INTERACTION_UNITS))

    @property
    def active(self) -> ScoreBlend:
        return (self.sampled if self.lead < 0 and self.steps >= MIN_STEPS_TO_SWITCH
                else self.ranked)

    @property
    def weights(self) -> np.ndarray:
        """The weights the lists use."""
        return self.active.weights

    def bonus(self, features: UserFeatures, scale: float) -> np.ndarray:
        """:meth:`ScoreBlend.bonus` of the blend the lists use."""
        return self.active.bonus(features, scale)

    def bonus_of(self, values: np.ndarray, scale: float | np.ndarray) -> np.ndarray:
        """:meth:`ScoreBlend.bonus_of` of the blend the lists use."""
        return self.active.bonus_of(values, scale)

    def record(self, ranked_hit: bool, sampled_hit: bool) -> None:
        """Whether each blend listed a step's item in its top k."""
        self.lead = _LEAD_DECAY * self.lead + (int(ranked_hit) - int(sampled_hit))
        self.steps += 1

    def to_bytes(self) -> bytes:
        """The lead, the steps, then each blend's :meth:`ScoreBlend.to_bytes`, ``ranked``'s
        after its length (big-endian)."""
        ranked = self.ranked.to_bytes()
        return struct.pack(_SELECTION_HEAD, self.lead, self.steps, len(ranked)) + ranked \
            + self.sampled.to_bytes()

    @classmethod
    def from_bytes(cls, blob: bytes) -> BlendSelection:
        head = struct.calcsize(_SELECTION_HEAD)
        if len(blob) < head:
            raise ValueError(f"blend selection of {len(blob)} bytes is shorter than its header")
        lead, steps, n = struct.unpack_from(_SELECTION_HEAD, blob)
        ranked = ScoreBlend.from_bytes(blob[head:head + n])
        return cls(ranked, ScoreBlend.from_bytes(blob[head + n:]), lead, steps)


@dataclass
class BlendSchedule:
    """Which chances to learn the blend (known users' positive events) take a step: every
    one of the first ``warm``, then one in ``every``. A step ranks the catalogue, and the
    blend has a few weights that settle early; counting events (not calls) keeps the cost
    per event the same whatever the bundle size.

    >>> s = BlendSchedule(2, 3)
    >>> [s.take() for _ in range(7)]
    [True, True, True, False, False, True, False]
    """

    warm: int
    every: int
    chances: int = 0

    def take(self) -> bool:
        self.chances += 1
        return self.chances <= self.warm or self.chances % self.every == 0


def pack_blends(chances: int, selections: Mapping[str, BlendSelection]) -> bytes:
    """What an operator keeps of its score blends (``FS1``): its :class:`BlendSchedule`'s
    chances so far, then each variant's name (UTF-8) and :meth:`BlendSelection.to_bytes`,
    each after its length (big-endian).

    >>> s = BlendSelection.initial(ModelConfig())
    >>> s.record(ranked_hit=False, sampled_hit=True)
    >>> chances, back = unpack_blends(pack_blends(7, {"": s}))
    >>> chances, back[""].lead, back[""].sampled == s.sampled
    (7, -1.0, True)
    """
    parts = [_KEPT_MAGIC, struct.pack(">QH", chances, len(selections))]
    for name, selection in selections.items():
        encoded, blob = name.encode("utf-8"), selection.to_bytes()
        parts += [struct.pack(">H", len(encoded)), encoded, struct.pack(">I", len(blob)), blob]
    return b"".join(parts)


def unpack_blends(blob: bytes) -> tuple[int, dict[str, BlendSelection]]:
    """The chances and the selections by variant of :func:`pack_blends`."""
    if blob[:3] != _KEPT_MAGIC:
        raise ValueError(f"not kept score blends (magic {blob[:3]!r})")
    try:
        chances, count = struct.unpack_from(">QH", blob, 3)
        off = 3 + struct.calcsize(">QH")
        selections: dict[str, BlendSelection] = {}
        for _ in range(count):
            (n,) = struct.unpack_from(">H", blob, off)
            name = blob[off + 2:off + 2 + n].decode("utf-8")
            (size,) = struct.unpack_from(">I", blob, off + 2 + n)
            off += 6 + n
            if off + size > len(blob):
                raise ValueError(f"the blends of variant {name!r} need {size} bytes, "
                                 f"{len(blob) - off} are left")
            selections[name] = BlendSelection.from_bytes(blob[off:off + size])
            off += size
    except struct.error as e:
        raise ValueError(f"kept score blends of {len(blob)} bytes are cut short: {e}") from e
    return chances, selections

