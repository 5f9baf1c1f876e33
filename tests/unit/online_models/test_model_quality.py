"""The model recovers planted structure, and cold-start items surface by category."""

from __future__ import annotations

import numpy as np

from freshrec.generator import Storefront
from online_models import FreshRecModel, ModelConfig
from schemas.events import Event


def test_clustered_users_get_their_clusters_items() -> None:
    shop = Storefront(seed=5, n_users=120, n_items=600, n_categories=12, n_clusters=4,
                      taste_strength=0.9, new_user_rate=0.0, new_item_rate=0.0)
    events = list(shop.events(12_000))
    model = FreshRecModel(ModelConfig(dim=16, seed=2, exploration=0.0))
    model.learn_many(events)  # the job's and replay's learner (learn_one: the contract tests)
    truth = shop.truth
    share, chance = [], []
    n_items = len(truth.item_category)
    for user, cluster in list(truth.user_cluster.items())[:60]:
        if user not in model.users:
            continue
        prefs = set(truth.cluster_categories(cluster))
        in_prefs = sum(1 for c in truth.item_category.values() if c in prefs)
        recs = model.recommend(user, k=20)
        share.append(np.mean([truth.item_category[r.item_id] in prefs for r in recs]))
        chance.append(in_prefs / n_items)
    assert len(share) >= 30
    # Far above chance: most of each list comes from the cluster's categories.
    assert np.mean(share) > 0.6
    assert np.mean(share) > 2.5 * np.mean(chance)


def test_new_item_with_metadata_reaches_users_of_its_category() -> None:
    cfg = ModelConfig(dim=32, seed=4, exploration=0.0, recency_boost=0.0)
    model = FreshRecModel(cfg)
    rng = np.random.default_rng(0)
    t = 1_000
    cats = [f"cat{c}" for c in range(10)]
    for c in cats:
        for i in range(8):
            model.learn_one(Event(f"u-{c}-{i}", "item_upsert", t, item_id=f"{c}-i{i}",
                                  category=c, brand=f"{c}-brand", price=10.0 + i))
    for n in range(3000):  # every user browses one category
        c = cats[n % 10]
        t += 1_000
        model.learn_one(Event(f"e{n}", "view", t, user_id=f"fan-{c}-{n % 7}",
                              item_id=f"{c}-i{int(rng.integers(0, 8))}"))
    # A new item with metadata: never interacted with.
    model.learn_one(Event("new", "item_upsert", t, item_id="fresh-shoe", category="cat3",
                          brand="cat3-brand", price=15.0))
    fans = [f"fan-cat3-{i}" for i in range(7)]
    others = [f"fan-cat5-{i}" for i in range(7)]
    hits_fans = sum("fresh-shoe" in [r.item_id for r in model.recommend(u, k=20)] for u in fans)
    hits_others = sum("fresh-shoe" in [r.item_id for r in model.recommend(u, k=20)]
                      for u in others)
    assert hits_fans >= 5
    assert hits_others == 0
