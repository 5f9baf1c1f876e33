"""Baselines built on the user's own recent items, ranked over a popularity fallback: the
recent items themselves (repeat consumption), item-to-item co-occurrence (item kNN) and
session kNN (V-SKNN, Ludewig & Jannach 2018).
"""

from __future__ import annotations

import math

import numpy as np

from online_models.baselines import PopularityModel
from online_models.config import ModelConfig
from online_models.covisit import add_pair
from schemas.events import Event

_NONE = (np.zeros(0, dtype=np.int64), np.zeros(0))


class _PopularityFilled(PopularityModel):
    """A neighbourhood baseline whose own scores are >= 0 and sparse; the rest of the list
    is filled by time-decayed popularity (a value below 1e-3, so it only breaks ties)."""

    def _own_scores(self, user_id: str) -> tuple[np.ndarray, np.ndarray]:
        """The model's own scores as (rows, values); a row may repeat (values add up)."""
        raise NotImplementedError

    def _as_rows(self, scores: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        n = len(scores)
        return (np.fromiter(map(self.items.index.__getitem__, scores), np.int64, n),
                np.fromiter(scores.values(), np.float64, n))

    def _scores(self, user_id: str) -> np.ndarray:
        n = self.n_items
        logc = self.logc[:n]
        top = float(logc.max()) if n else 0.0
        s = 1e-3 * np.exp(logc - top) if np.isfinite(top) else np.zeros(n)
        rows, values = self._own_scores(user_id)
        if rows.shape[0]:
            s += np.bincount(rows, weights=values, minlength=n)
        return s

    def _learn(self, event: Event, w: float) -> None:
        super()._learn(event, w)
        if w > 0:
            self._learn_positive(event.user_id, event.item_id)  # type: ignore[arg-type]

    def _learn_positive(self, user_id: str, item_id: str) -> None:
        raise NotImplementedError

    def learn_one(self, event: Event) -> None:
        if event.event_type == "forget_user" and event.user_id is not None:
            self._forget(event.user_id)
        super().learn_one(event)

    def _forget(self, user_id: str) -> None:
        raise NotImplementedError


def _push_recent(seq: dict[str, None], item_id: str, n: int) -> None:
    """Move ``item_id`` to the end of ``seq`` (distinct items, oldest first; a dict is an
    ordered set), keep ``n``."""
    seq.pop(item_id, None)
    seq[item_id] = None
    if len(seq) > n:
        del seq[next(iter(seq))]


class RecentItemsModel(_PopularityFilled):
    """Repeat consumption: the user's own recent positive items, most recent first."""

    name = "recent"
    _reason = "you viewed this recently"

    def __init__(self, config: ModelConfig | None = None, n_recent: int = 50) -> None:
        super().__init__(config)
        self.n_recent = n_recent
        self.recent: dict[str, dict[str, None]] = {}

    def _learn_positive(self, user_id: str, item_id: str) -> None:
        _push_recent(self.recent.setdefault(user_id, {}), item_id, self.n_recent)

    def _forget(self, user_id: str) -> None:
        self.recent.pop(user_id, None)

    def _own_scores(self, user_id: str) -> tuple[np.ndarray, np.ndarray]:
        seq = self.recent.get(user_id, {})
        return self._as_rows({item: 1.0 + pos for pos, item in enumerate(seq)})


class ItemKNNModel(_PopularityFilled):
    """Streaming item-to-item co-occurrence (item-based CF in the style of Amazon's and of
    the session-based "SR"/"AR" rules): each positive event pairs its item with the
    user's last ``window`` distinct items, weighted ``1 / distance``; a pair's similarity
    is its weight over ``sqrt(n_a n_b)`` (cosine of the occurrence vectors). A user's
    scores sum the similarities of their recent items' neighbours, the most recent item
    weighted most. Each item keeps its ``max_neighbours`` strongest neighbours.
    """

    name = "item_knn"
    _reason = "bought together"

    def __init__(self, config: ModelConfig | None = None, window: int = 10,
                 max_neighbours: int = 100) -> None:
        super().__init__(config)
        self.window, self.max_neighbours = window, max_neighbours
        self.recent: dict[str, dict[str, None]] = {}
        self.pairs: dict[str, dict[str, float]] = {}
        self.count = np.zeros(self.logc.shape[0])  # positive events per item row

    def _item_row(self, item_id: str) -> int:
        r = super()._item_row(item_id)
        if r >= self.count.shape[0]:
            self.count = np.concatenate([self.count, np.zeros(self.logc.shape[0]
                                                              - self.count.shape[0])])
        return r

    def _add_pair(self, a: str, b: str, w: float) -> None:
        self.pairs[a] = add_pair(self.pairs.get(a, {}), b, w, self.max_neighbours)

    def _learn_positive(self, user_id: str, item_id: str) -> None:
        self.count[self.items.index[item_id]] += 1.0
        seq = self.recent.setdefault(user_id, {})
        for dist, other in enumerate(reversed(seq), start=1):
            if other != item_id:
                self._add_pair(item_id, other, 1.0 / dist)
                self._add_pair(other, item_id, 1.0 / dist)
        _push_recent(seq, item_id, self.window)

    def _forget(self, user_id: str) -> None:
        self.recent.pop(user_id, None)

    def _own_scores(self, user_id: str) -> tuple[np.ndarray, np.ndarray]:
        row_of = self.items.index.__getitem__
        rows: list[np.ndarray] = []
        values: list[np.ndarray] = []
        for pos, item in enumerate(reversed(self.recent.get(user_id, {}))):
            pairs = self.pairs.get(item)
            if not pairs:
                continue
            rows.append(np.fromiter(map(row_of, pairs), np.int64, len(pairs)))
            w = 1.0 / (pos + 1) / math.sqrt(self.count[row_of(item)])
            values.append(w * np.fromiter(pairs.values(), np.float64, len(pairs)))
        if not rows:
            return _NONE
        at = np.concatenate(rows)
        return at, np.concatenate(values) / np.sqrt(self.count[at])


class SessionKNNModel(_PopularityFilled):
    """Sequence kNN in the V-SKNN style (Ludewig & Jannach 2018): each user's recent
    distinct items are their "session"; neighbours are the sessions, among the latest
    ``sample`` ones sharing an item, most similar to the user's last ``m`` items
    (position-weighted: the newest counts 1, the oldest ``1/m``); an item scores the sum
    of the similarities of the ``k`` best neighbours holding it."""

    name = "sknn"
    _reason = "shoppers like you viewed"

    def __init__(self, config: ModelConfig | None = None, session_len: int = 50,
                 m: int = 10, k: int = 100, sample: int = 500, per_item: int = 100) -> None:
        super().__init__(config)
        self.session_len, self.m, self.k, self.sample = session_len, m, k, sample
        self.per_item = per_item
        # user -> distinct items, oldest first (ordered, and a set for similarity)
        self.sessions: dict[str, dict[str, None]] = {}
        self.holders: dict[str, dict[str, None]] = {}  # item -> users, oldest first
        self._rows: dict[str, np.ndarray] = {}  # user -> the session's item rows (a cache)

    def _learn_positive(self, user_id: str, item_id: str) -> None:
        _push_recent(self.sessions.setdefault(user_id, {}), item_id, self.session_len)
        self._rows.pop(user_id, None)
        users = self.holders.setdefault(item_id, {})
        users.pop(user_id, None)
        users[user_id] = None
        if len(users) > self.per_item:
            del users[next(iter(users))]

    def _forget(self, user_id: str) -> None:
        self.sessions.pop(user_id, None)
        self._rows.pop(user_id, None)
        for users in self.holders.values():
            users.pop(user_id, None)

    def _session_rows(self, user_id: str) -> np.ndarray:
        rows = self._rows.get(user_id)
        if rows is None:
            session = self.sessions[user_id]
            rows = self._rows[user_id] = np.fromiter(map(self.items.index.__getitem__, session),
                                                      np.int64, len(session))
        return rows

    def _own_scores(self, user_id: str) -> tuple[np.ndarray, np.ndarray]:
        current = list(self.sessions.get(user_id, {}))[-self.m:]
        if not current:
            return _NONE
        # Integer weights (the newest m, the oldest 1) sum the same in any order, and a set
        # intersection's order follows the string hashes of the run.
        weight = {item: pos + 1 for pos, item in enumerate(current)}
        candidates: dict[str, None] = {}
        for item in reversed(current):  # the newest item's holders first
            candidates.update(dict.fromkeys(reversed(self.holders.get(item, {}))))
            if len(candidates) - (user_id in candidates) >= self.sample:
                break
        candidates.pop(user_id, None)
        sims = []
        sessions = self.sessions
        current_items = weight.keys()
        weight_of = weight.__getitem__
        m = len(current)
        for other in list(candidates)[: self.sample]:
            shared = current_items & sessions[other].keys()
            if shared:
                sims.append((sum(map(weight_of, shared)) / m, other))
        sims.sort(reverse=True)
        best = sims[: self.k]
        if not best:
            return _NONE
        # Each neighbour's similarity on every item of its session, summed per row.
        held = [self._session_rows(other) for _, other in best]
        return np.concatenate(held), np.repeat([sim for sim, _ in best],
                                               [rows.shape[0] for rows in held])
