"""The synthetic catalogue and queries of the catalogue-scale benchmark
(:mod:`bench.bench_ann`), and the exact top-K and recall its searches are judged by."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch

K = 20
POP_WEIGHT = 0.3  # ModelConfig.pop_weight
IDLE_STATIC = POP_WEIGHT * -50.0  # the replica's static term for an item with no trend yet
CONTEXT_DECAY = 0.6  # ModelConfig.context_decay
USER_WEIGHT = 0.5  # ModelConfig.user_weight


def log(msg: str) -> None:
    """Progress on stderr: stdout keeps the tables."""
    print(msg, file=sys.stderr, flush=True)


# -- data --------------------------------------------------------------------------------
@dataclass
class Catalogue:
    vectors: np.ndarray  # n x dim float32
    static: np.ndarray  # n float32: bias + pop_weight * log trend (replica.static)
    category: np.ndarray  # n int
    centres: np.ndarray  # n_categories x dim

    @property
    def augmented(self) -> np.ndarray:
        """``[v, static]``: the query ``[q, 1]`` scores ``q . v + static`` by inner product."""
        return np.hstack([self.vectors, self.static[:, None]]).astype(np.float32)


def make_catalogue(n: int, dim: int, seed: int, idle_share: float = 0.2) -> Catalogue:
    """Clustered item vectors: category centre + within-category spread, log-normal norms.

    The static term mixes a small learned bias with ``pop_weight * log(count)`` (Zipf counts
    up to ~1,000 events per item); ``idle_share`` of the items have no events yet and sit at
    the replica's floor, as a long-tail catalogue does.
    """
    rng = np.random.default_rng(seed)
    n_cat = max(20, int(np.sqrt(n)))
    centres = (rng.standard_normal((n_cat, dim)) * (1.5 / np.sqrt(dim))).astype(np.float32)
    # Category sizes are skewed too (a few big categories, many small ones).
    cat_p = 1.0 / np.arange(1, n_cat + 1) ** 0.7
    category = rng.choice(n_cat, size=n, p=cat_p / cat_p.sum())
    vectors = centres[category] + (rng.standard_normal((n, dim)) * (0.6 / np.sqrt(dim))).astype(
        np.float32
    )
    vectors *= rng.lognormal(0.0, 0.25, (n, 1)).astype(np.float32)
    rank = rng.permutation(n) + 1
    log_count = np.log(1000.0) * (1.0 - np.log(rank) / np.log(n))  # 0 .. ln 1000
    static = rng.normal(0.0, 0.2, n) + POP_WEIGHT * log_count
    idle = rng.random(n) < idle_share
    static[idle] = IDLE_STATIC + rng.normal(0.0, 0.2, int(idle.sum()))
    return Catalogue(vectors.astype(np.float32), static.astype(np.float32), category, centres)


def make_queries(cat: Catalogue, n_q: int, seed: int, context_len: int = 5) -> np.ndarray:
    """User queries like ``query_vector``: ``user_weight * p_u + sum_j c_j v_{h_j}``."""
    rng = np.random.default_rng(seed + 1)
    dim = cat.vectors.shape[1]
    w = CONTEXT_DECAY ** np.arange(context_len - 1, -1, -1)
    w = (w / w.sum()).astype(np.float32)
    by_cat: dict[int, np.ndarray] = {}
    out = np.empty((n_q, dim), dtype=np.float32)
    n_cat = cat.centres.shape[0]
    for i in range(n_q):
        interests = rng.choice(n_cat, size=int(rng.integers(1, 4)), replace=False)
        hist = []
        for _ in range(context_len):
            c = int(rng.choice(interests))
            members = by_cat.get(c)
            if members is None:
                members = by_cat[c] = np.flatnonzero(cat.category == c)
            hist.append(int(rng.choice(members)) if members.size else 0)
        p_u = cat.centres[interests[0]] + rng.standard_normal(dim) * (0.6 / np.sqrt(dim))
        out[i] = USER_WEIGHT * p_u + w @ cat.vectors[hist]
    return out


def exact_top(
    vectors: np.ndarray, static: np.ndarray, queries: np.ndarray, k: int = K
) -> np.ndarray:
    """Exact float32 top-``k`` rows per query (ground truth), in chunks of queries."""
    vt, st = torch.from_numpy(vectors).T, torch.from_numpy(static)
    out = []
    for lo in range(0, queries.shape[0], 32):
        s = torch.addmm(st, torch.from_numpy(queries[lo : lo + 32]), vt)
        out.append(torch.topk(s, k, dim=1).indices.numpy())
    return np.concatenate(out)


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(
        np.mean(
            [
                len(set(f[:K].tolist()) & set(t.tolist())) / K
                for f, t in zip(found, truth, strict=True)
            ]
        )
    )


def subset_recall(
    found: list[np.ndarray], truth: np.ndarray, subset: np.ndarray
) -> tuple[float | None, int]:
    """Recall restricted to true top-k entries that are in ``subset`` (the updated rows)."""
    mask = np.zeros(int(max(truth.max(), subset.max())) + 1, dtype=bool)
    mask[subset] = True
    hit = total = 0
    for f, t in zip(found, truth, strict=True):
        want = {int(r) for r in t if r < mask.size and mask[r]}
        total += len(want)
        hit += len(want & set(f[:K].tolist()))
    return (hit / total if total else None), total


# -- exact scorers -----------------------------------------------------------------------
def top_from_scores(s: np.ndarray, k: int = K) -> np.ndarray:
    part = np.argpartition(-s, k)[:k]
    return part[np.argsort(-s[part], kind="stable")]
