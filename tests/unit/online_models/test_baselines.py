"""The neighbourhood baselines of ``freshrec replay``: recent, item kNN, session kNN."""

from __future__ import annotations

import numpy as np
import pytest

from online_models import ModelConfig
from online_models.neighbour_baselines import ItemKNNModel, RecentItemsModel, SessionKNNModel
from schemas.events import Event

pytestmark = pytest.mark.unit
CFG = ModelConfig(dim=8, seed=5, exploration=0.0)


def _views(user: str, items: list[str], t0: int = 0) -> list[Event]:
    return [Event(f"{user}-{t0}-{n}", "view", t0 + 1000 * n, user_id=user, item_id=item)
            for n, item in enumerate(items)]


def test_recent_ranks_the_users_own_items_newest_first() -> None:
    m = RecentItemsModel(CFG)
    for ev in _views("u", ["a", "b", "c", "a"]) + _views("v", ["z", "z", "z"]):
        m.learn_one(ev)
    # the rest of the list is filled by popularity (z)
    assert [r.item_id for r in m.recommend("u", k=4)] == ["a", "c", "b", "z"]


def test_item_knn_and_sknn_recommend_what_others_took_next() -> None:
    knn, sknn = ItemKNNModel(CFG), SessionKNNModel(CFG)
    events = []
    for u in range(5):
        events += _views(f"u{u}", ["a", "b"], t0=u * 10_000)
    events += _views("w", ["x", "y", "x", "y", "x"], t0=90_000)  # popular, unrelated
    events += _views("me", ["a"], t0=200_000)
    for ev in events:
        knn.learn_one(ev)
        sknn.learn_one(ev)
    assert knn.recommend("me", k=1)[0].item_id == "b"
    assert [r.item_id for r in sknn.recommend("me", k=2)] == ["a", "b"]
    scores = knn.score_items("me", ["b", "x", "unknown"])
    assert scores[0] > scores[1] and scores[2] == -np.inf
    knn.learn_one(Event("f", "forget_user", 300_000, user_id="me"))
    assert "me" not in knn.recent


def test_item_knn_keeps_the_strongest_neighbours() -> None:
    knn = ItemKNNModel(CFG, window=10, max_neighbours=2)
    events = []
    for u, other in enumerate(["n1", "n1", "n1", "n2", "n2", "n3", "n4", "n5"]):
        events += _views(f"u{u}", [other, "a"], t0=u * 10_000)
    for ev in events:
        knn.learn_one(ev)
    assert set(knn.pairs["a"]) <= {"n1", "n2", "n3", "n4", "n5"}
    assert len(knn.pairs["a"]) <= 4 and "n1" in knn.pairs["a"]
