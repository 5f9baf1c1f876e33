"""The models ``freshrec replay`` compares, by name: freshrec's own and the baselines.

>>> from schemas.events import Event
>>> evs = [Event(f"e{n}", "view", n, user_id=f"u{n % 3}", item_id=f"i{n % 5}")
...        for n in range(30)]
>>> for name in MODEL_NAMES[1:]:
...     m = make_model(name)
...     m.learn_many(evs)
...     print(m.name, len(m.recommend("u1", k=3)), m.n_items)
popularity 3 5
recent 3 5
item_knn 3 5
sknn 3 5
river_funkmf 3 5
river_biasedmf 3 5
"""

from __future__ import annotations

from online_models.config import ModelConfig

MODEL_NAMES = ("freshrec", "popularity", "recent", "item_knn", "sknn", "river_funkmf",
               "river_biasedmf")


def make_model(name: str, config: ModelConfig | None = None) -> object:
    """Build a model by its replay name (see :data:`MODEL_NAMES`).

    >>> make_model("item_knn").name
    'item_knn'
    """
    # Imported here: every CLI command imports this module (for MODEL_NAMES), and the models
    # bring River and SciPy (~1 s) that only a replay needs.
    from online_models.baselines import PopularityModel, RiverMFModel
    from online_models.model import FreshRecModel
    from online_models.neighbour_baselines import (
        ItemKNNModel,
        RecentItemsModel,
        SessionKNNModel,
    )

    cfg = config or ModelConfig()
    if name == "freshrec":
        return FreshRecModel(cfg)
    if name == "popularity":
        return PopularityModel(cfg)
    if name == "river_funkmf":
        return RiverMFModel("funkmf", cfg)
    if name == "river_biasedmf":
        return RiverMFModel("biasedmf", cfg)
    if name == "recent":
        return RecentItemsModel(cfg)
    if name == "item_knn":
        return ItemKNNModel(cfg)
    if name == "sknn":
        return SessionKNNModel(cfg)
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
