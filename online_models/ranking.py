"""Exact top-K over a replica's scores: boosts, exclusions, unavailable items and the
per-category diversity cap.

>>> from online_models.config import ModelConfig
>>> from online_models.replica import ItemReplica
>>> rep = ItemReplica(ModelConfig(dim=4, seed=0))
>>> for i in range(5):
...     _ = rep.upsert(f"i{i}", meta={"category": "c" + str(i % 2)})
>>> rows, scores = top_k(rep, np.ones(4, dtype=np.float32), 3)
>>> len(set(rows.tolist())), bool(np.all(np.diff(scores) <= 0))
(3, True)
>>> rows, _ = top_k(rep, np.ones(4, dtype=np.float32), 3, diversity_cap=1)
>>> sorted(rep.meta[r]["category"] for r in rows.tolist())
['c0', 'c1']
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from online_models.replica import ItemReplica


def top_k(
    replica: ItemReplica,
    query: np.ndarray,
    k: int,
    exclude_rows: Iterable[int] = (),
    boost_rows: np.ndarray | None = None,
    boost: np.ndarray | None = None,
    diversity_cap: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` rows and scores for one query, best first.

    Unavailable and excluded rows never appear; ``boost`` is added at ``boost_rows``;
    ``diversity_cap`` > 0 keeps at most that many items per category.
    """
    return select(replica, replica.scores(query), k, exclude_rows, boost_rows, boost,
                  diversity_cap)


def select(
    replica: ItemReplica,
    s: np.ndarray,
    k: int,
    exclude_rows: Iterable[int] = (),
    boost_rows: np.ndarray | None = None,
    boost: np.ndarray | None = None,
    diversity_cap: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of a score vector (modified in place) with boosts and exclusions."""
    n = s.shape[0]
    if boost_rows is not None and boost is not None and len(boost_rows):
        np.add.at(s, boost_rows, boost)
    blocked = replica.blocked[:n]
    if blocked.any():
        s[blocked] = -np.inf
    ex = np.fromiter(exclude_rows, dtype=np.int64)
    if ex.size:
        s[ex[(ex >= 0) & (ex < n)]] = -np.inf
    pool = k if diversity_cap <= 0 else min(n, 4 * k + 32)
    if pool < n:
        import torch

        cand = torch.topk(torch.from_numpy(s), pool, sorted=False).indices.numpy()
    else:
        cand = np.arange(n)
    cand = cand[np.argsort(-s[cand], kind="stable")]
    cand = cand[np.isfinite(s[cand])]
    if diversity_cap > 0:
        cand = cap_per_category(replica, cand, k, diversity_cap)
    cand = cand[:k]
    return cand, s[cand]


def cap_per_category(replica: ItemReplica, cand: np.ndarray, k: int, cap: int) -> np.ndarray:
    """The first ``k`` of ``cand`` (best first) with at most ``cap`` per category."""
    counts: dict[int, int] = {}
    kept: list[int] = []
    for r in cand.tolist():
        c = int(replica.category_code[r])
        if c >= 0:
            if counts.get(c, 0) >= cap:
                continue
            counts[c] = counts.get(c, 0) + 1
        kept.append(r)
        if len(kept) == k:
            break
    return np.asarray(kept, dtype=np.int64)
