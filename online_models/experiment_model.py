"""An experiment's variants side by side in one process (``freshrec replay --experiments``).

Each variant is a :class:`~online_models.model.FreshRecModel` with its own settings and its
own users; all share one item side (the first variant's replica, co-visitation and text
map), as the job's variants share item-update. Every event goes to the variant of its user
(:meth:`Experiment.variant_of`); item upserts go to the shared item side once.

>>> from schemas.events import Event
>>> exp = Experiment.from_mapping({"key": "k", "variants": {
...     "a": {"share": 0.5}, "b": {"share": 0.5, "recency_boost": 2.0}}})
>>> m = ExperimentModel(exp, ModelConfig(dim=8, seed=1, exploration=0.0))
>>> for n in range(40):
...     m.learn_one(Event(f"e{n}", "view", 1000 * n, user_id=f"u{n % 8}", item_id=f"i{n % 5}"))
>>> m.n_items, m.models["a"].replica is m.models["b"].replica
(5, True)
>>> m.slice_of("u1") == "variant:" + exp.variant_of("u1")
True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from online_models.config import ModelConfig
from online_models.experiments import Experiment, trending_list
from online_models.model import FreshRecModel
from schemas.events import Event
from schemas.recommendation import ScoredItem


class ExperimentModel:
    """The variants of ``experiment`` over ``config`` (see the module docstring)."""

    name = "experiment"

    def __init__(self, experiment: Experiment, config: ModelConfig) -> None:
        self.experiment = experiment
        self.models: dict[str, FreshRecModel] = {}
        first: FreshRecModel | None = None
        for v in experiment.variants:
            model = FreshRecModel(experiment.config(v.name, config), items_of=first)
            first = first or model
            self.models[v.name] = model
        self._items = first
        self._trending = {v.name for v in experiment.variants if v.trending_only}
        self._last: tuple[str, str] | None = None  # (variant, user) of the last list
        # Per variant, each tested user's [tests, hits]: significance with users as units.
        self.per_user: dict[str, dict[str, list[int]]] = {n: {} for n in experiment.names}

    @property
    def n_items(self) -> int:
        assert self._items is not None
        return self._items.n_items

    def slice_of(self, user_id: str) -> str:
        """The evaluation slice of the user's tests: ``variant:<name>``."""
        return "variant:" + self.experiment.variant_of(user_id)

    def learn_one(self, event: Event) -> None:
        self.learn_many((event,))

    def learn_many(self, events: Sequence[Event]) -> None:
        """Each event to its user's variant (item upserts to the shared item side)."""
        for ev in events:
            for m in self.models.values():  # one clock: every variant sees event time
                m.now_ms = max(m.now_ms, ev.ts_ms)
            if ev.user_id is None:
                assert self._items is not None
                self._items.learn_one(ev)
            else:
                self.models[self.experiment.variant_of(ev.user_id)].learn_one(ev)

    def recommend(self, user_id: str, k: int = 20, exclude: Iterable[str] = ()
                  ) -> list[ScoredItem]:
        variant = self.experiment.variant_of(user_id)
        self._last = (variant, user_id)
        model = self.models[variant]
        if variant in self._trending:
            return trending_list(model.replica, model.user(user_id), model.config, k, exclude)
        return model.recommend(user_id, k, exclude)

    def recommend_many(self, user_ids: Sequence[str], k: int = 20) -> list[list[ScoredItem]]:
        return [self.recommend(u, k) for u in user_ids]

    def observe(self, hit: bool) -> bool:
        """The hit of the last list goes to the variant that made it (and its user's
        counts)."""
        if self._last is None:
            return False
        variant, user_id = self._last
        counts = self.per_user[variant].setdefault(user_id, [0, 0])
        counts[0] += 1
        counts[1] += int(hit)
        return self.models[variant].observe(hit)

    def score_items(self, user_id: str, item_ids: Sequence[str]) -> np.ndarray:
        return self.models[self.experiment.variant_of(user_id)].score_items(user_id, item_ids)
