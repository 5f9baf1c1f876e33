"""The in-memory freshrec model: a River-like API over the pure functions of ``bundle``
and ``scoring``.

>>> from schemas.events import Event
>>> m = FreshRecModel(ModelConfig(dim=8, seed=1, exploration=0.0))
>>> m.learn_one(Event("e0", "item_upsert", 0, item_id="shoe-2", category="shoes"))
>>> for n, item in enumerate(["shoe-1", "hat-1", "shoe-1", "hat-2"]):
...     m.learn_one(Event(f"e{n + 1}", "view", 1000 * n, user_id="u1", item_id=item,
...                       category=item.split("-")[0] + "s"))
>>> recs = m.recommend("u1", k=3)
>>> len(recs), len({r.item_id for r in recs}), recs[0].reason
(3, 3, 'you viewed this recently')
>>> [r.item_id for r in m.recommend("u1", k=4, exclude={"shoe-1"})].count("shoe-1")
0
>>> len(m.recommend("someone-new", k=2))
2
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from online_models.ann import use_approximate
from online_models.arrays import positions
from online_models.blend import (
    BlendSchedule,
    BlendSelection,
    UserFeatures,
    user_features,
    users_features,
)
from online_models.bundle import learn_bundle
from online_models.config import ModelConfig
from online_models.covisit import CoVisitTable
from online_models.item_gradients import apply_item_gradients
from online_models.learning import event_meta, lr_schedule
from online_models.replica import ItemReplica
from online_models.scoring import (
    DenseScores,
    blend_step,
    dense_scores,
    query_vector,
    recommend_for_user,
    recommend_for_users,
)
from online_models.state import UserState
from online_models.streaming import DriftMonitor, RollingMetrics, UserClusters
from online_models.tables import content_vector
from online_models.text import ColdText, item_text, load_text_encoder, warm_milestone
from schemas.events import INTERACTION_TYPES, Event
from schemas.recommendation import ScoredItem

_INTERACTIONS = frozenset(INTERACTION_TYPES)


def learn_cold_start(clusters: UserClusters, user: UserState, replica: ItemReplica,
                     config: ModelConfig, taken: Sequence[tuple[str, float]], ts_ms: int
                     ) -> np.ndarray | None:
    """Learn the user clusters from the positive events (``taken``: item, weight, in order)
    of a user still in their first ``4 * cold_events`` events: clusters serve cold users,
    so they learn from early ones. The user's query is computed once for all of them, and
    returned (None where none was), for the caller to score the user's list with."""
    if user.n_events > 4 * config.cold_events or not any(w > 0 for _, w in taken):
        return None
    query = query_vector(user, replica, config)
    clusters.learn_many(query, [(item, w) for item, w in taken if w > 0], ts_ms)
    return query


def cold_start_bonus(clusters: UserClusters, user: UserState, replica: ItemReplica,
                     config: ModelConfig, query: np.ndarray | None = None
                     ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The ``cold_cluster`` feature (rows, values) of the popular items of a cold user's
    cluster; it fades out linearly over the user's first ``cold_events`` events.
    ``(None, None)`` if none. ``query``: the user's :func:`query_vector` if the caller has
    it."""
    if user.n_events >= config.cold_events:
        return None, None
    share = 1.0 - user.n_events / config.cold_events
    if query is None:
        query = query_vector(user, replica, config)
    pop = clusters.popular(query, 2 * config.top_k)
    index = replica.table.index
    rows = [(index[i], v) for i, v in pop if i in index]
    if not rows:
        return None, None
    return (np.fromiter((r for r, _ in rows), dtype=np.int64, count=len(rows)),
            np.fromiter((share * v for _, v in rows),
                        dtype=np.float32, count=len(rows)))


@runtime_checkable
class Recommender(Protocol):
    """What every model (freshrec and the baselines) offers."""

    name: str

    def learn_one(self, event: Event) -> None: ...

    def learn_many(self, events: Sequence[Event]) -> None: ...

    def recommend(self, user_id: str, k: int = 20, exclude: Iterable[str] = ()
                  ) -> list[ScoredItem]: ...

    def recommend_many(self, user_ids: Sequence[str], k: int = 20) -> list[list[ScoredItem]]: ...

    @property
    def n_items(self) -> int: ...


class FreshRecModel:
    """Sequence-aware online factorisation with trending, clusters and drift handling.

    Parameters
    ----------
    config : ModelConfig
        Hyper-parameters; ``seed`` makes everything deterministic.

    Notes
    -----
    ``learn_many`` is the job's bundle learner (:func:`~online_models.bundle.learn_bundle`)
    with the item gradients applied to the model's own replica at once, and ``learn_one``
    is a bundle of one; ``recommend`` is :func:`~online_models.scoring.recommend_for_user`
    plus a cluster-popular bonus for cold users.
    """

    name = "freshrec"

    def __init__(self, config: ModelConfig | None = None,
                 items_of: FreshRecModel | None = None) -> None:
        self.config = config or ModelConfig()
        # An experiment's variants share one item side (items_of's): replica (vectors,
        # trend), co-visitation and the text map.
        self.replica = ItemReplica(self.config) if items_of is None else items_of.replica
        self.users: dict[str, UserState] = {}
        self.explore_rng = np.random.default_rng([self.config.seed, 1])
        self.clusters = UserClusters(self.config.n_clusters, self.config.dim, self.config.seed,
                                     self.config.trend_half_life_s)
        self.drift = DriftMonitor()
        self.metrics = RollingMetrics()
        self.step = 0  # events since start or last drift (drives the lr schedule)
        self.now_ms = 0
        self.covisit = (items_of.covisit if items_of is not None
                        else CoVisitTable(self.config.covisit_neighbours, self.replica.table.index))
        self.blend = BlendSelection.initial(self.config)
        # Replays are short: the blend learns from every chance for a while.
        self._blend_schedule = BlendSchedule(5000, 2)
        # The user, time and features of the last list, for the score_items that follows it
        # (the replay's sampled AUC scores the same test): used once, dropped on learning.
        # Only right after recommend: another model sharing the item side may learn later.
        self._listed: tuple[UserState, int, UserFeatures] | None = None
        # The last user's dense scores, kept while that user and the replica are unchanged:
        # an event's test list, its sampled AUC and its blend step share one scan.
        self._dense: tuple[UserState, int, DenseScores] | None = None
        if items_of is not None:
            self.text, self._item_text = items_of.text, items_of._item_text
            self._item_positives = items_of._item_positives
            return
        encoder = load_text_encoder(self.config.text_encoder)
        self.text = (None if encoder is None
                     else ColdText(encoder, self.config.dim, self.config.text_map_min))
        # The item side's memory for the text map: each item's words and interactions.
        self._item_text: dict[str, str] = {}
        self._item_positives: dict[str, int] = {}

    # -- state --------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        """Items known to the model."""
        return len(self.replica)

    def user(self, user_id: str) -> UserState:
        """The user's state (a fresh one, not stored, for an unseen user)."""
        u = self.users.get(user_id)
        return u if u is not None else UserState.new(user_id, self.config.dim, self.config.seed)

    # -- learning -----------------------------------------------------------------------
    def learn_one(self, event: Event) -> None:
        """Learn from one event (interactions, ``item_upsert``, ``forget_user``): a bundle
        of one."""
        self.learn_many((event,))

    def learn_many(self, events: Sequence[Event]) -> None:
        """Learn from events in order: each run of interactions is one
        :func:`~online_models.bundle.learn_bundle` step (the job's learner), applied to the
        replica at once; upserts and forgets take effect between runs."""
        self._listed = None
        run: list[Event] = []
        for ev in events:
            if ev.ts_ms > self.now_ms:
                self.now_ms = ev.ts_ms
            if ev.event_type in _INTERACTIONS:
                run.append(ev)
                continue
            self._learn_run(run)
            run = []
            if ev.event_type == "item_upsert" and ev.item_id is not None:
                meta = {"category": ev.category, "brand": ev.brand, "price": ev.price,
                        "available": ev.available, "title": ev.title}
                vector = None
                if ev.item_id not in self.replica:
                    vector = self._start_vectors([ev])[0]
                self.replica.upsert(ev.item_id, vector, meta, ts_ms=ev.ts_ms)
            elif ev.event_type == "forget_user" and ev.user_id is not None:
                self.users.pop(ev.user_id, None)
        self._learn_run(run)

    def _learn_run(self, events: Sequence[Event]) -> None:
        if not events:
            return
        cfg = self.config
        for ev in events:
            self._learn_blend(ev)
        if self.text is not None:
            new = list({ev.item_id: ev for ev in events
                        if ev.item_id is not None and ev.item_id not in self.replica}.values())
            for ev, vector in zip(new, self._start_vectors(new), strict=True):
                if vector is not None:
                    self.replica.upsert(ev.item_id, vector, event_meta(ev), ts_ms=ev.ts_ms)
        step = learn_bundle(self.users, events, self.replica, cfg, lr_schedule(self.step, cfg))
        apply_item_gradients(self.replica, step.gradients, cfg)
        if self.text is not None:
            self._learn_text(step.gradients.item_ids, step.gradients.n_positive.tolist())
        self.covisit.add(step.covisits)
        self.users.update(step.users)
        self.step += len(step.learned)
        for ev in step.learned:
            user_id, item_id = ev.user_id, ev.item_id
            assert user_id is not None and item_id is not None
            learn_cold_start(self.clusters, self.users[user_id], self.replica, cfg,
                             [(item_id, cfg.event_weight(ev.event_type))], ev.ts_ms)

    def _start_vectors(self, events: Sequence[Event]) -> list[np.ndarray | None]:
        """Starting vectors of the new items of ``events`` from their text (``None``: from
        metadata); remembers their words for the text map."""
        if self.text is None or not events:
            return [None] * len(events)
        cfg = self.config
        texts = [item_text(ev.title, ev.description, ev.category, ev.brand, ev.context)
                 for ev in events]
        for ev, t in zip(events, texts, strict=True):
            if t:
                self._item_text[ev.item_id or ""] = t
        content = np.stack([content_vector(ev.item_id or "", cfg.dim, cfg.seed, ev.category,
                                           ev.brand, ev.price, cfg.init_scale)
                            for ev in events])
        starts = self.text.start_vectors(texts, content)
        # Text places an item only where its category has no learned items to place it by:
        # measured, the category's mean beats the text map wherever it exists.
        return [None if self.replica.category_mean(ev.category) is not None else v
                for ev, v in zip(events, starts, strict=True)]

    def _learn_text(self, item_ids: Sequence[str], positives: Sequence[int]) -> None:
        """Teach the text map the vectors of items that just reached a warm milestone."""
        assert self.text is not None
        counts = self._item_positives
        warm: list[str] = []
        for item_id, n in zip(item_ids, positives, strict=True):
            if n <= 0:
                continue
            before = counts.get(item_id, 0)
            counts[item_id] = before + n
            if item_id in self._item_text and warm_milestone(before, before + n):
                warm.append(item_id)
        if warm:
            rows = [self.replica.row(i) for i in warm]
            self.text.learn([self._item_text[i] for i in warm],
                            self.replica.table.vectors[rows])

    def _learn_blend(self, event: Event) -> None:
        """Test the blend on a known user's positive event before learning it (on the
        chances :class:`~online_models.blend.BlendSchedule` takes)."""
        user = self.users.get(event.user_id or "")
        row = self.replica.row(event.item_id or "")
        if user is None or row < 0 or self.config.event_weight(event.event_type) <= 0:
            return
        if not self._blend_schedule.take():
            return
        blend_step(self.blend, user, self.replica, self.config,
                   self.features(user, max(user.last_ts, self.now_ms)), row,
                   self._dense_scores(user))

    def _dense_scores(self, user: UserState) -> DenseScores:
        """:func:`~online_models.scoring.dense_scores`, reused while ``user`` is the same
        object and the replica has not been written since."""
        memo, writes = self._dense, self.replica.writes
        if memo is not None and memo[0] is user and memo[1] == writes:
            return memo[2]
        dense = dense_scores(user, self.replica, self.config)
        self._dense = (user, writes, dense)
        return dense

    def features(self, user: UserState, now_ms: int) -> UserFeatures:
        """The user's sparse features: history, co-visitation, cold-start cluster."""
        return user_features(user, self.replica, self.config, now_ms, self.covisit,
                             cold_start_bonus(self.clusters, user, self.replica, self.config))

    # -- feedback -----------------------------------------------------------------------
    def observe(self, hit: bool) -> bool:
        """Feed back whether the last list contained the next item (prequential hit).

        Updates the rolling metrics and ADWIN; on a detected drift the learning-rate
        schedule restarts so the model adapts faster. Returns ``True`` on drift.
        """
        self.metrics.update(hit)
        if self.drift.update(hit):
            self.step = 0
            return True
        return False

    # -- recommendation -----------------------------------------------------------------
    def recommend(self, user_id: str, k: int = 20, exclude: Iterable[str] = (),
                  reasons: bool = True) -> list[ScoredItem]:
        """Top-``k`` items with reasons; excludes purchased (per config), ``exclude`` and
        unavailable items. An unseen user gets trending items (cold start)."""
        user = self.user(user_id)
        now = max(user.last_ts, self.now_ms)
        feats = self.features(user, now)
        self._listed = (user, now, feats)
        exact = not use_approximate(len(self.replica), self.config)
        return recommend_for_user(user, self.replica, self.config, k, now, exclude,
                                  feats, self.blend,
                                  self.explore_rng if self.config.exploration else None,
                                  reasons, self._dense_scores(user) if exact else None)

    def score_items(self, user_id: str, item_ids: Sequence[str]) -> np.ndarray:
        """The ranking scores of some items (dense score plus blend bonus; ``-inf`` for
        unknown items), on the scale :meth:`recommend` ranks by: sampled AUC."""
        rep = self.replica
        user = self.user(user_id)
        rows = np.array([rep.row(i) for i in item_ids], dtype=np.int64)
        out = np.full(rows.shape[0], -np.inf)
        known = rows >= 0
        if not known.any():
            return out
        d = self._dense_scores(user)
        now = max(user.last_ts, self.now_ms)
        listed, self._listed = self._listed, None
        feats = (listed[2] if listed is not None and listed[0] is user and listed[1] == now
                 else self.features(user, now))
        bonus = self.blend.bonus(feats, d.scale)
        r = rows[known]
        dense = rep.table._data[r] @ d.query + rep.static[r]
        at = positions(feats.rows, r, len(rep))
        sparse = np.zeros(r.shape[0])
        sparse[at >= 0] = bonus[at[at >= 0]]
        out[known] = dense + sparse
        return out

    def recommend_many(self, user_ids: Sequence[str], k: int = 20, reasons: bool = True
                       ) -> list[list[ScoredItem]]:
        """Lists for many users with one matrix product (see
        :func:`~online_models.scoring.recommend_for_users`). No exploration."""
        users = [self.user(u) for u in user_ids]
        cfg = self.config
        queries = [query_vector(u, self.replica, cfg) for u in users]
        features = users_features(
            users, self.replica, cfg, [max(u.last_ts, self.now_ms) for u in users],
            self.covisit, [cold_start_bonus(self.clusters, u, self.replica, cfg, q)
                           for u, q in zip(users, queries, strict=True)])
        return recommend_for_users(users, self.replica, cfg, k, self.now_ms, features,
                                   self.blend, reasons, queries)
