"""Model configuration: a plain frozen dataclass, free of any freshrec/pyflink import.

It is also the ``[model]`` section of freshrec's settings (``freshrec_common.settings``): the
defaults and the checks of every model setting live here, and a bad value raises
:class:`ModelConfigError` naming the field, which the settings loader reports with the
value's source.

>>> cfg = ModelConfig(dim=8, seed=1)
>>> cfg.event_weight("purchase"), cfg.event_weight("unfavorite"), cfg.event_weight("item_upsert")
(5.0, -1.0, 0.0)
>>> ModelConfig(exclude="everything")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
online_models.config.ModelConfigError: exclude: must be one of 'purchased', ..., got 'everything'
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

EXCLUDE_CHOICES = ("purchased", "seen", "none")
ANN_DTYPES = ("f16", "f32")
TEXT_ENCODERS = ("wordllama", "")


class ModelConfigError(ValueError):
    """A model setting has a bad value; ``field`` names it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Hyper-parameters of the freshrec model and its streaming helpers.

    Parameters
    ----------
    dim : int
        Embedding dimensions of user and item vectors.
    top_k : int
        Default list length.
    learning_rate : float
        Base step size of the row-wise Adagrad updates.
    l2 : float
        L2 regularisation applied to every touched row.
    negatives : int
        Sampled negatives per positive (popularity-aware sampling).
    history_len : int
        Recent interactions kept per user.
    exclude : str
        ``purchased`` (default), ``seen`` (anything interacted with) or ``none``.
    exploration : float
        Share of each list given to trending items the model would not have shown.
    seed : int
        Seed of every random choice (initialisation, negatives, exploration).
    weight_view, weight_click, weight_favorite, weight_add_to_cart, weight_purchase : float
        Positive weight of each interaction type in the pairwise loss.
    weight_unfavorite, weight_remove_from_cart : float
        Weights (<= 0) of negative feedback: the item is pushed below the negatives.
    context_len : int
        How many of the most recent items form the sequence part of the query.
    context_decay : float
        Weight ratio between consecutive context positions (most recent = 1).
    user_weight : float
        Weight of the long-term user vector in the query.
    recency_boost : float
        Starting blend weight of an item's place in the user's recent history (repeat
        views are common; :mod:`online_models.blend` learns it from there).
    recency_half_life_s : float
        Half-life of the recent-history time feature in event time.
    covisit_window : int
        A positive event is paired with the user's last this many distinct items, and a
        list's co-visitation candidates come from them (:mod:`online_models.covisit`); 0
        turns co-visitation off (no pairs, no co-visitation candidates or features).
    covisit_neighbours : int
        Co-visitation neighbours kept per item.
    blend_learning_rate : float
        Adagrad step of the online score blend (0 = keep the starting weights).
    pop_weight : float
        Weight of the time-decayed log popularity in the score.
    trend_half_life_s : float
        Half-life of the trending counters.
    init_scale : float
        Norm scale of initial (content) vectors.
    neg_pop_alpha : float
        Negatives are drawn proportionally to ``trend ** alpha`` (0 = uniform).
    lr_decay_events : float
        Global learning-rate schedule ``lr / sqrt(1 + t / lr_decay_events)``, reset on drift.
    min_lr_scale : float
        Floor of that schedule.
    cold_events : int
        Users with fewer events get the cold-start blend (trending + cluster-popular).
    n_clusters : int
        Clusters of the streaming user clustering (``river.cluster.KMeans``).
    cluster_weight : float
        Starting blend weight of cluster-popular items for cold users.
    diversity_cap : int
        At most this many items of one category per list (0 = no cap).
    min_step_ratio : float
        An item gradient whose Adagrad step would move the item's vector by less than
        this share of its norm is not sent (0 = send all); cuts messages, not learning.
    ann_min_items : int
        Catalogues of at least this many items are served top-K from an approximate
        (HNSW) index instead of an exact scan (``online_models.ann``; 0 = always exact).
    ann_dtype : str
        Storage of vectors in that index: ``"f16"`` (half the memory) or ``"f32"``.
    text_encoder : str
        ``"wordllama"``: a new item starts from its text (:mod:`online_models.text`) when
        the package is installed; ``""``: from its metadata only.
    text_map_min : int
        Warm examples the text map needs before new items start from it.
    """

    dim: int = 32
    top_k: int = 20
    learning_rate: float = 0.05
    l2: float = 1e-4
    negatives: int = 4
    history_len: int = 20
    exclude: str = "purchased"
    exploration: float = 0.1
    seed: int = 42
    weight_view: float = 1.0
    weight_click: float = 1.0
    weight_favorite: float = 2.0
    weight_add_to_cart: float = 3.0
    weight_purchase: float = 5.0
    weight_unfavorite: float = -1.0
    weight_remove_from_cart: float = -1.0
    context_len: int = 5
    context_decay: float = 0.6
    user_weight: float = 0.5
    recency_boost: float = 1.0
    recency_half_life_s: float = 3600.0
    covisit_window: int = 10
    covisit_neighbours: int = 100
    blend_learning_rate: float = 0.1
    pop_weight: float = 0.3
    trend_half_life_s: float = 3600.0
    init_scale: float = 0.3
    neg_pop_alpha: float = 0.5
    lr_decay_events: float = 100_000.0
    min_lr_scale: float = 0.1
    cold_events: int = 3
    n_clusters: int = 8
    cluster_weight: float = 0.4
    diversity_cap: int = 0
    min_step_ratio: float = 1e-3
    ann_min_items: int = 250_000
    ann_dtype: str = "f16"
    text_encoder: str = "wordllama"
    text_map_min: int = 50

    def __post_init__(self) -> None:
        for name in ("dim", "top_k", "history_len", "context_len", "covisit_neighbours",
                     "negatives", "n_clusters", "text_map_min"):
            if getattr(self, name) < 1:
                raise ModelConfigError(name, f"must be >= 1, got {getattr(self, name)!r}")
        if self.covisit_window < 0:
            raise ModelConfigError("covisit_window",
                                   f"must be >= 0 (0: off), got {self.covisit_window!r}")
        for name, choices in (("exclude", EXCLUDE_CHOICES), ("ann_dtype", ANN_DTYPES),
                              ("text_encoder", TEXT_ENCODERS)):
            if getattr(self, name) not in choices:
                listed = ", ".join(repr(c) for c in choices)
                raise ModelConfigError(name, f"must be one of {listed}, got "
                                             f"{getattr(self, name)!r}")
        if not 0.0 <= self.exploration <= 1.0:
            raise ModelConfigError("exploration", f"must be in [0, 1], got {self.exploration!r}")
        if not self.learning_rate > 0:
            raise ModelConfigError("learning_rate", f"must be > 0, got {self.learning_rate!r}")
        for name, zero in (("cold_events", "no cluster bonus"),
                           ("cluster_weight", "no cluster bonus"),
                           ("blend_learning_rate", "fixed blend"),
                           ("ann_min_items", "always exact"), ("diversity_cap", "no cap"),
                           ("min_step_ratio", "send every gradient")):
            if not 0 <= getattr(self, name) < math.inf:
                raise ModelConfigError(name, f"must be a finite number >= 0 (0 = {zero}), "
                                             f"got {getattr(self, name)!r}")
        for name in ("weight_unfavorite", "weight_remove_from_cart"):
            if getattr(self, name) > 0:
                raise ModelConfigError(name, "negative feedback needs a weight <= 0, got "
                                             f"{getattr(self, name)!r}")

    def event_weight(self, event_type: str) -> float:
        """Loss weight of an event type (0 for non-interactions such as ``item_upsert``)."""
        return float(getattr(self, f"weight_{event_type}", 0.0))

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)
