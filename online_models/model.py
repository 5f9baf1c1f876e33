"""The in-memory freshrec model: a River-like API over the pure functions of ``core``.

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
from typing import Any, Protocol, runtime_checkable

import numpy as np

from online_models.config import ModelConfig
from online_models.core import (
    _event_meta,
    _updated_user,
    apply_gradients_to_replica,
    context_rows,
    lr_schedule,
    query_vector,
    recommend_for_user,
    recommend_for_users,
    user_step_arrays,
)
from online_models.replica import ItemReplica
from online_models.state import UserState
from online_models.streaming import DriftMonitor, RollingMetrics, UserClusters
from schemas.events import INTERACTION_TYPES, Event
from schemas.recommendation import ScoredItem

_INTERACTIONS = frozenset(INTERACTION_TYPES)


def learn_cold_start(clusters: UserClusters, user: UserState, replica: ItemReplica,
                     config: ModelConfig, item_id: str, weight: float, ts_ms: int) -> None:
    """Learn the user clusters from a positive event of a user still in their first
    ``4 * cold_events`` events: clusters serve cold users, so they learn from early ones."""
    if weight > 0 and user.n_events <= 4 * config.cold_events:
        clusters.learn(query_vector(user, replica, config), item_id, weight, ts_ms)


def cold_start_bonus(clusters: UserClusters, user: UserState, replica: ItemReplica,
                     config: ModelConfig) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Score bonus (rows, values) of the popular items of a cold user's cluster; it fades
    out linearly over the user's first ``cold_events`` events. ``(None, None)`` if none."""
    if user.n_events >= config.cold_events:
        return None, None
    share = 1.0 - user.n_events / config.cold_events
    pop = clusters.popular(query_vector(user, replica, config), 2 * config.top_k)
    index = replica.table.index
    rows = [(index[i], v) for i, v in pop if i in index]
    if not rows:
        return None, None
    return (np.fromiter((r for r, _ in rows), dtype=np.int64, count=len(rows)),
            np.fromiter((config.cluster_weight * share * v for _, v in rows),
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
    ``learn_one`` is :func:`~online_models.core.user_step_arrays` followed by
    :func:`~online_models.core.apply_gradients_to_replica` (the in-process form of
    :func:`~online_models.core.apply_item_gradient`); ``recommend`` is
    :func:`~online_models.core.recommend_for_user` plus a cluster-popular bonus for cold
    users. ``learn_many`` takes one torch mini-batch step over a list of events.
    """

    name = "freshrec"

    def __init__(self, config: ModelConfig | None = None) -> None:
        self.config = config or ModelConfig()
        self.replica = ItemReplica(self.config)
        self.users: dict[str, UserState] = {}
        self.rng = np.random.default_rng(self.config.seed)
        self.explore_rng = np.random.default_rng([self.config.seed, 1])
        self.clusters = UserClusters(self.config.n_clusters, self.config.dim, self.config.seed,
                                     self.config.trend_half_life_s)
        self.drift = DriftMonitor()
        self.metrics = RollingMetrics()
        self.step = 0  # events since start or last drift (drives the lr schedule)
        self.now_ms = 0

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
        """Learn from one event (interactions, ``item_upsert``, ``forget_user``)."""
        etype = event.event_type
        if event.ts_ms > self.now_ms:
            self.now_ms = event.ts_ms
        if etype in _INTERACTIONS:
            if event.user_id is None or event.item_id is None:
                return
            cfg = self.config
            user = self.users.get(event.user_id)
            if user is None:
                user = UserState.new(event.user_id, cfg.dim, cfg.seed)
            lr_scale = lr_schedule(self.step, cfg)
            new_user, rows, grads, bgrads, trend_w = user_step_arrays(
                user, event, self.replica, cfg, self.rng, lr_scale)
            apply_gradients_to_replica(self.replica, rows, grads, bgrads, trend_w, event.ts_ms,
                                       cfg, lr_scale)
            self.users[event.user_id] = new_user
            self.step += 1
            learn_cold_start(self.clusters, new_user, self.replica, cfg, event.item_id,
                             trend_w, event.ts_ms)
        elif etype == "item_upsert" and event.item_id is not None:
            meta = {"category": event.category, "brand": event.brand, "price": event.price,
                    "available": event.available, "title": event.title}
            self.replica.upsert(event.item_id, meta=meta, ts_ms=event.ts_ms)
        elif etype == "forget_user" and event.user_id is not None:
            self.users.pop(event.user_id, None)

    def learn_many(self, events: Sequence[Event]) -> None:
        """Learn from a micro-batch with one torch mini-batch step.

        Each interaction's context (recent items) and negatives are built in stream order;
        the loss of the whole batch is then computed in torch at the batch-start
        parameters and applied with row-wise Adagrad, one update per touched row.
        """
        import torch

        cfg = self.config
        batch: list[tuple[Event, UserState, int, np.ndarray, np.ndarray, np.ndarray, float]] = []
        work: dict[str, UserState] = {}
        for ev in events:
            if ev.event_type not in _INTERACTIONS or ev.user_id is None or ev.item_id is None:
                if ev.event_type == "forget_user":  # must not race with pending user updates
                    self._flush_batch(batch, work, torch)
                    batch, work = [], {}
                self.learn_one(ev)
                continue
            if ev.ts_ms > self.now_ms:
                self.now_ms = ev.ts_ms
            w = cfg.event_weight(ev.event_type)
            user = work.get(ev.user_id) or self.users.get(ev.user_id)
            if user is None:
                user = UserState.new(ev.user_id, cfg.dim, cfg.seed)
            pos = self.replica.ensure(ev.item_id, _event_meta(ev), ev.ts_ms)
            ctx, cw = context_rows(user, self.replica, cfg)
            negs = self.replica.sample_negatives(self.rng, cfg.negatives)
            batch.append((ev, user, pos, ctx, cw, negs, w))
            work[ev.user_id] = _updated_user(user, ev, w, cfg, user.vector, user.acc)
        self._flush_batch(batch, work, torch)

    def _flush_batch(self, batch: list[Any], work: dict[str, UserState], torch: Any) -> None:
        if not batch:
            return
        cfg = self.config
        B, K, C, d = len(batch), cfg.negatives, cfg.context_len, cfg.dim
        user_ids = list(dict.fromkeys(b[0].user_id for b in batch))
        uidx = {u: j for j, u in enumerate(user_ids)}
        ub = np.fromiter((uidx[b[0].user_id] for b in batch), dtype=np.int64, count=B)
        P0 = np.stack([work[u].vector for u in user_ids]).astype(np.float32)
        acc0 = np.array([work[u].acc for u in user_ids], dtype=np.float32)
        tgt = np.empty((B, 1 + K), dtype=np.int64)
        mask = np.ones((B, 1 + K), dtype=np.float32)
        ctx = np.zeros((B, C), dtype=np.int64)
        cwm = np.zeros((B, C), dtype=np.float32)
        wts = np.empty(B, dtype=np.float32)
        for j, (_, _, pos, c_rows, c_w, negs, w) in enumerate(batch):
            tgt[j, 0] = pos
            tgt[j, 1:] = negs
            mask[j, 1:] = negs != pos
            n = c_rows.shape[0]
            if n:
                ctx[j, C - n:] = c_rows
                cwm[j, C - n:] = c_w
            wts[j] = w
        V = torch.from_numpy(self.replica.vectors)
        bias = torch.from_numpy(self.replica.bias[: len(self.replica)])
        tP, tub = torch.from_numpy(P0), torch.from_numpy(ub)
        tt, tm = torch.from_numpy(tgt), torch.from_numpy(mask)
        tc, tcw, tw = torch.from_numpy(ctx), torch.from_numpy(cwm), torch.from_numpy(wts)
        Pb = tP[tub]
        Q = cfg.user_weight * Pb + torch.einsum("bc,bcd->bd", tcw, V[tc])
        T = V[tt]
        s = torch.einsum("bkd,bd->bk", T, Q) + bias[tt]
        sign = torch.where(tw >= 0, 1.0, -1.0)
        x = sign[:, None] * (s[:, :1] - s[:, 1:])
        nneg = tm[:, 1:].sum(1).clamp(min=1.0)
        g = (-tw.abs() * sign / nneg)[:, None] * torch.sigmoid(-x) * tm[:, 1:]
        c = torch.cat((g.sum(1, keepdim=True), -g), 1)
        grad_q = torch.einsum("bk,bkd->bd", c, T)
        lr = cfg.learning_rate * lr_schedule(self.step, cfg)
        # users
        gP = torch.zeros_like(tP).index_add_(0, tub, cfg.user_weight * grad_q) + cfg.l2 * tP
        acc = acc0 + (gP * gP).mean(1).numpy()
        newP = (tP - (lr / torch.from_numpy(np.sqrt(acc + 1e-6)))[:, None] * gP).numpy()
        # items: targets and contexts
        rows = torch.cat((tt.reshape(-1), tc.reshape(-1)))
        gi = torch.cat(((c[:, :, None] * Q[:, None, :]).reshape(-1, d),
                        (tcw[:, :, None] * grad_q[:, None, :]).reshape(-1, d)))
        gb = torch.cat((c.reshape(-1), torch.zeros(B * C)))
        keep = torch.cat((tm.reshape(-1), (tcw.reshape(-1) > 0).float())) > 0
        rows, gi, gb = rows[keep], gi[keep], gb[keep]
        uniq, inv = torch.unique(rows, return_inverse=True)
        G = torch.zeros((uniq.shape[0], d)).index_add_(0, inv, gi) + cfg.l2 * V[uniq]
        Gb = torch.zeros(uniq.shape[0]).index_add_(0, inv, gb)
        r = uniq.numpy()
        from online_models.core import adagrad_rows

        adagrad_rows(self.replica.table._data, self.replica.table._acc, r, G.numpy(), lr)
        self.replica.bias[r] -= np.float32(lr) * Gb.numpy()
        for ev, _, pos, *_rest, w in batch:
            if w > 0:
                self.replica.record_trend(pos, w, ev.ts_ms)
        st, t = self.replica.static, self.replica.trend[r]
        st[r] = self.replica.bias[r] + cfg.pop_weight * np.where(np.isfinite(t), t, -50.0)
        for j, u in enumerate(user_ids):
            newP[j].setflags(write=False)
            self.users[u] = work[u].replace(vector=newP[j], acc=float(acc[j]))
        for ev, _, _, _, _, _, w in batch:
            learn_cold_start(self.clusters, self.users[ev.user_id], self.replica, cfg,
                             ev.item_id, w, ev.ts_ms)
        self.step += B

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
        b_rows, b_vals = cold_start_bonus(self.clusters, user, self.replica, self.config)
        now = max(user.last_ts, self.now_ms)
        return recommend_for_user(user, self.replica, self.config, k, now, exclude, b_rows,
                                  b_vals, self.explore_rng if self.config.exploration else None,
                                  reasons)

    def recommend_many(self, user_ids: Sequence[str], k: int = 20, reasons: bool = True
                       ) -> list[list[ScoredItem]]:
        """Lists for many users with one matrix product (see
        :func:`~online_models.core.recommend_for_users`). No exploration."""
        users = [self.user(u) for u in user_ids]
        return recommend_for_users(users, self.replica, self.config, k, self.now_ms,
                                   [cold_start_bonus(self.clusters, u, self.replica, self.config)
                                    for u in users], reasons)
