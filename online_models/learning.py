"""The pieces of a learning step that the bundle learner, the item owner and scoring share:
new item states, the user's recent context, learning-rate schedules, event weights,
row-wise Adagrad, and applying an item changelog record to a replica.

>>> cfg = ModelConfig(dim=4, seed=0)
>>> event_weights(cfg)["purchase"], event_weights(cfg)["unfavorite"]
(5.0, -1.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np

from online_models.config import ModelConfig
from online_models.item_state import ItemState
from online_models.replica import ItemReplica
from online_models.state import UserState
from schemas.events import Event
from schemas.item_embedding import ItemEmbedding

EPS = 1e-6
NEGATIVE_TYPES = frozenset({"unfavorite", "remove_from_cart"})


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


def lr_schedules(steps: np.ndarray, config: ModelConfig) -> np.ndarray:
    """:func:`lr_schedule` of many steps at once (float64, the same values).

    >>> lr_schedules(np.array([0, 300_000]), ModelConfig()).round(3).tolist()
    [1.0, 0.5]
    """
    return np.maximum(config.min_lr_scale,
                      1.0 / np.sqrt(1.0 + np.asarray(steps, dtype=np.float64)
                                    / config.lr_decay_events))


def event_meta(event: Event) -> dict[str, Any] | None:
    if event.category is None and event.brand is None and event.price is None:
        return None
    return {"category": event.category, "brand": event.brand, "price": event.price}


_WEIGHTS: dict[int, tuple[ModelConfig, dict[str, float]]] = {}


def event_weights(config: ModelConfig) -> dict[str, float]:
    """``config.event_weight`` of the interaction types, as a table kept per config (the
    getattr costs ~1 us per event)."""
    hit = _WEIGHTS.get(id(config))
    if hit is None or hit[0] is not config:
        if len(_WEIGHTS) > 64:
            _WEIGHTS.clear()
        names = ("view", "click", "favorite", "add_to_cart", "purchase", "unfavorite",
                 "remove_from_cart")
        hit = _WEIGHTS[id(config)] = (config, {t: config.event_weight(t) for t in names})
    return hit[1]


def recent_context(user: UserState, index: Mapping[str, int], n_max: int) -> list[int]:
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


def context_rows(user: UserState, replica: ItemReplica, config: ModelConfig
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Replica rows of the user's last ``context_len`` positive items, oldest first, and
    their weights."""
    rows = recent_context(user, replica.table.index, config.context_len)
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    return np.asarray(rows, dtype=np.int64), context_weights(len(rows), config.context_decay)


def adagrad_rows(vectors: np.ndarray, acc: np.ndarray, rows: np.ndarray, grads: np.ndarray,
                 lr: float) -> None:
    """Row-wise Adagrad on ``vectors[rows]`` in place (rows must be distinct)."""
    a = acc[rows] + np.einsum("ij,ij->i", grads, grads) / grads.shape[1]
    acc[rows] = a
    vectors[rows] -= (lr / np.sqrt(a + EPS))[:, None] * grads


def apply_item_embedding(replica: ItemReplica, emb: ItemEmbedding) -> int:
    """Upsert one item-embedding changelog record into ``replica``; returns its row.

    Every reader of the changelog (the job's replicas, ``freshrec serve``) applies records
    this way, so they score items alike.
    """
    meta = {"category": emb.category, "brand": emb.brand, "price": emb.price,
            "available": emb.available, "title": emb.title}
    # The changelog carries the log trend as of updated_at; rebase it on the replica's
    # own forward-decay origin so all items stay comparable.
    trend = None if emb.trend is None else emb.trend + replica.log_time(emb.updated_at)
    vector = np.asarray(emb.vector, dtype=np.float32)
    if emb.n_events == 0:
        # Until its first interaction an item lives where its category's items have moved;
        # with none learned, where the item side started it (its text, or its content).
        mean = replica.category_mean(emb.category)
        if mean is not None:
            vector = replica.cold_item_vector(emb.item_id, meta, mean)
    return replica.upsert(emb.item_id, vector, meta, bias=emb.bias, trend=trend, acc=emb.acc)
