"""The streaming user clusters (River k-means) behind cold-start lists."""

from __future__ import annotations

import numpy as np

from online_models.streaming import UserClusters


def test_a_cold_vector_gets_the_nearest_cluster_with_items_while_its_own_has_none() -> None:
    clusters = UserClusters(n_clusters=3, dim=2, seed=0, learn_every=1)
    for t in range(100):
        clusters.learn(np.array([1.0, 0.0]), "a", 1.0, t * 1000)
        clusters.learn(np.array([-1.0, 0.0]), "b", 1.0, t * 1000)
    empty = [c for c, counts in enumerate(clusters.counts) if not counts]
    assert empty, "every cluster has items: nothing to fall back from"
    far = clusters._centers()[empty[0]].copy()
    assert clusters.assign(far) == empty[0]
    items = [item for item, _ in clusters.popular(far, 5)]
    assert items and set(items) <= {"a", "b"}
    # A vector whose own cluster has items gets those.
    assert clusters.popular(np.array([1.0, 0.0]), 1)[0][0] == "a"
    assert clusters.popular(np.array([-1.0, 0.0]), 1)[0][0] == "b"


def test_nothing_learned_nothing_popular() -> None:
    assert UserClusters(n_clusters=2, dim=2).popular(np.zeros(2, dtype=np.float32), 3) == []


def test_a_cluster_still_filling_up_is_not_served_from_a_stale_list() -> None:
    clusters = UserClusters(n_clusters=1, dim=2, seed=0, top_n=50)
    x = np.array([1.0, 0.0])
    clusters.learn(x, "first", 1.0, 0)
    assert [i for i, _ in clusters.popular(x, 10)] == ["first"]
    for n in range(5):  # fewer than the 32 updates a full list is kept for
        clusters.learn(x, f"item-{n}", 2.0, 1000)
    assert len(clusters.popular(x, 10)) == 6
