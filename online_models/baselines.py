"""Baselines under the same interface: time-decayed popularity and River FunkMF / BiasedMF
here; the user's recent items, item-to-item co-occurrence (item kNN) and session kNN
(V-SKNN) in :mod:`online_models.neighbour_baselines`;
:func:`online_models.replay_models.make_model` builds any of them by name.

River models are trained by River itself (``learn_one(user, item, weight)`` on
positive interactions); for ranking every item, each keeps a numpy mirror of River's
item latents (refreshed for the touched item after each step), so a full ranking costs
one matrix-vector product instead of one ``predict_one`` per item. The scores equal
River's ``predict_one`` up to the user/global constant.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import repeat

import numpy as np

from online_models.config import ModelConfig
from schemas.events import INTERACTION_TYPES, Event
from schemas.recommendation import ScoredItem

_INTERACTIONS = frozenset(INTERACTION_TYPES)
LN2 = math.log(2.0)


class _RowIndex:
    """Growable id -> row map with per-row float arrays."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.index: dict[str, int] = {}

    def row(self, item_id: str) -> int:
        r = self.index.get(item_id)
        if r is None:
            r = len(self.ids)
            self.ids.append(item_id)
            self.index[item_id] = r
        return r


def _top(scores: np.ndarray, k: int, ex_rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
    if ex_rows:
        scores[np.asarray(ex_rows, dtype=np.int64)] = -np.inf
    n = scores.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    cand = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
    cand = cand[np.argsort(-scores[cand], kind="stable")]
    cand = cand[np.isfinite(scores[cand])]
    return cand, scores[cand]


class _Base:
    name = "base"

    def __init__(self, config: ModelConfig | None = None) -> None:
        self.config = config or ModelConfig()
        self.items = _RowIndex()
        self.purchased: dict[str, set[str]] = {}
        self.seen: dict[str, set[str]] = {}
        # A replay test asks for a list and then for the scores of its sampled negatives:
        # one scoring serves both until the next event is learned.
        self._learned = 0
        self._cached: tuple[str, int, np.ndarray] | None = None

    @property
    def n_items(self) -> int:
        return len(self.items.ids)

    def _track(self, ev: Event) -> bool:
        """Common bookkeeping; ``True`` if the event is a positive interaction to learn."""
        if ev.event_type == "item_upsert" and ev.item_id is not None:
            self._item_row(ev.item_id)
            return False
        if ev.event_type == "forget_user" and ev.user_id is not None:
            self.purchased.pop(ev.user_id, None)
            self.seen.pop(ev.user_id, None)
            return False
        if ev.event_type not in _INTERACTIONS or ev.user_id is None or ev.item_id is None:
            return False
        self._item_row(ev.item_id)
        self.seen.setdefault(ev.user_id, set()).add(ev.item_id)
        if ev.event_type == "purchase":
            self.purchased.setdefault(ev.user_id, set()).add(ev.item_id)
        return True

    def _item_row(self, item_id: str) -> int:
        return self.items.row(item_id)

    def _excluded(self, user_id: str, exclude: Iterable[str]) -> list[int]:
        ex = set(exclude)
        if self.config.exclude == "purchased":
            ex |= self.purchased.get(user_id, set())
        elif self.config.exclude == "seen":
            ex |= self.seen.get(user_id, set())
        idx = self.items.index
        return [idx[i] for i in ex if i in idx]

    def learn_many(self, events: Sequence[Event]) -> None:
        for ev in events:
            self.learn_one(ev)

    def learn_one(self, event: Event) -> None:
        self._learned += 1
        if self._track(event):
            self._learn(event, self.config.event_weight(event.event_type))

    def _learn(self, event: Event, weight: float) -> None:
        """Learn from one tracked interaction of loss weight ``weight``."""
        raise NotImplementedError

    def _scores(self, user_id: str) -> np.ndarray:
        raise NotImplementedError

    def _user_scores(self, user_id: str) -> np.ndarray:
        """:meth:`_scores`, computed once per user between two learned events (read only)."""
        c = self._cached
        if c is None or c[0] != user_id or c[1] != self._learned:
            c = self._cached = (user_id, self._learned, self._scores(user_id))
        return c[2]

    def recommend(self, user_id: str, k: int = 20, exclude: Iterable[str] = ()
                  ) -> list[ScoredItem]:
        if self.n_items == 0:
            return []
        rows, s = _top(self._user_scores(user_id).copy(), k, self._excluded(user_id, exclude))
        ids = self.items.ids
        return [ScoredItem(ids[r], float(v), self._reason) for r, v in
                zip(rows.tolist(), s.tolist(), strict=True)]

    def recommend_many(self, user_ids: Sequence[str], k: int = 20) -> list[list[ScoredItem]]:
        return [self.recommend(u, k) for u in user_ids]

    def score_items(self, user_id: str, item_ids: Sequence[str]) -> np.ndarray:
        """The ranking scores of some items (``-inf`` for unknown ones): sampled AUC."""
        if not self.n_items:
            return np.full(len(item_ids), -np.inf)
        rows = np.fromiter(map(self.items.index.get, item_ids, repeat(-1)), np.int64,
                           len(item_ids))
        scores = self._user_scores(user_id)[rows].astype(np.float64)
        scores[rows < 0] = -np.inf
        return scores

    _reason = "model score"


class PopularityModel(_Base):
    """Time-decayed popularity (a strong baseline on sparse logs): weighted interaction
    counts with half-life ``trend_half_life_s``, kept as forward-decayed log counts."""

    name = "popularity"
    _reason = "popular now"

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__(config)
        self.logc = np.full(1024, -np.inf)
        self._k = LN2 / (self.config.trend_half_life_s * 1000.0)
        self._t0: float | None = None

    def _item_row(self, item_id: str) -> int:
        r = self.items.row(item_id)
        if r >= self.logc.shape[0]:
            new = np.full(int(self.logc.shape[0] * 1.5) + 16, -np.inf)
            new[: self.logc.shape[0]] = self.logc
            self.logc = new
        return r

    def _learn(self, event: Event, w: float) -> None:
        if w <= 0:
            return
        if self._t0 is None:
            self._t0 = float(event.ts_ms)
        r = self.items.index[event.item_id]  # type: ignore[index]
        self.logc[r] = np.logaddexp(self.logc[r], math.log(w) + (event.ts_ms - self._t0) * self._k)

    def _scores(self, user_id: str) -> np.ndarray:
        s = self.logc[: self.n_items].copy()
        s[~np.isfinite(s)] = -1e9  # never-interacted items rank last but stay rankable
        return s


class RiverMFModel(_Base):
    """River's ``reco.FunkMF`` or ``reco.BiasedMF`` on positive interactions (y = weight).

    Parameters
    ----------
    kind : {"funkmf", "biasedmf"}
    config : ModelConfig
        ``dim``, ``learning_rate`` (River SGD step), ``l2`` and ``seed`` apply.
    """

    def __init__(self, kind: str = "funkmf", config: ModelConfig | None = None) -> None:
        super().__init__(config)
        from river import optim, reco

        cfg = self.config
        self.kind = kind
        self.name = f"river_{kind}"
        if kind == "funkmf":
            self.model = reco.FunkMF(n_factors=cfg.dim, optimizer=optim.SGD(cfg.learning_rate),
                                     l2=cfg.l2, seed=cfg.seed)
        elif kind == "biasedmf":
            self.model = reco.BiasedMF(n_factors=cfg.dim, seed=cfg.seed, l2_latent=cfg.l2,
                                       latent_optimizer=optim.SGD(cfg.learning_rate))
        else:
            raise ValueError(f"unknown River model {kind!r}")
        self.V = np.zeros((1024, cfg.dim), dtype=np.float32)
        self.b = np.zeros(1024, dtype=np.float32)

    def _item_row(self, item_id: str) -> int:
        r = self.items.row(item_id)
        if r >= self.V.shape[0]:
            n = int(self.V.shape[0] * 1.5) + 16
            V = np.zeros((n, self.V.shape[1]), dtype=np.float32)
            V[: self.V.shape[0]] = self.V
            b = np.zeros(n, dtype=np.float32)
            b[: self.b.shape[0]] = self.b
            self.V, self.b = V, b
        if r == len(self.items.ids) - 1:  # new: mirror River's initial latent
            self.V[r] = self.model.i_latents[item_id]
        return r

    def _learn(self, event: Event, w: float) -> None:
        if w <= 0:
            return
        self.model.learn_one(event.user_id, event.item_id, w)
        r = self.items.index[event.item_id]  # type: ignore[index]
        self.V[r] = self.model.i_latents[event.item_id]
        if self.kind == "biasedmf":
            self.b[r] = self.model.i_biases[event.item_id]

    def _scores(self, user_id: str) -> np.ndarray:
        u = np.asarray(self.model.u_latents[user_id], dtype=np.float32)
        n = self.n_items
        return self.V[:n] @ u + self.b[:n]
