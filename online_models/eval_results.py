"""What a prequential evaluation (:mod:`online_models.evaluate`) counts: each model's hits,
ranks and sampled AUC, over all tests and per slice, and the figures derived from them."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CUTOFFS = (10, 20)
SLICES = ("cold_users", "cold_items", "repeat_items", "new_to_user")


@dataclass
class SliceResult:
    """Quality counters of one set of tests (all of them, or a slice); one relevant item
    per test."""

    n_evaluated: int = 0
    hits: dict[int, int] = field(default_factory=lambda: dict.fromkeys(CUTOFFS, 0))
    ndcg_sum: float = 0.0
    rr_sum: float = 0.0
    auc_sum: float = 0.0
    n_auc: int = 0

    def add(self, rank: int, k: int, auc: float | None) -> None:
        """Count one test: ``rank`` of the item in the list (-1 if absent), list length
        ``k``, sampled AUC (``None`` without negatives)."""
        self.n_evaluated += 1
        if rank >= 0:
            for c in CUTOFFS:
                if rank < c:
                    self.hits[c] += 1
            if rank < 20:
                self.ndcg_sum += 1.0 / math.log2(rank + 2)
            if rank < k:
                self.rr_sum += 1.0 / (rank + 1)
        if auc is not None:
            self.auc_sum += auc
            self.n_auc += 1

    def _mean(self, total: float) -> float:
        return total / self.n_evaluated if self.n_evaluated else 0.0

    def recall(self, k: int) -> float:
        """Recall@k (one relevant item per test)."""
        return self._mean(self.hits[k])

    def hit_rate(self, k: int) -> float:
        """Share of tests whose item is in the top ``k``: with one relevant item per test
        it equals Recall@k (kept as its own JSON field, ``hit_rate@20``)."""
        return self.recall(k)

    def precision(self, k: int) -> float:
        """Precision@k = hits / (k * tests): at most one of the k slots can be relevant."""
        return self.recall(k) / k

    def f1(self, k: int) -> float:
        """F1@k = 2PR / (P + R) of Precision@k and Recall@k."""
        p, r = self.precision(k), self.recall(k)
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    @property
    def ndcg20(self) -> float:
        """NDCG@20."""
        return self._mean(self.ndcg_sum)

    @property
    def mrr(self) -> float:
        """Mean reciprocal rank within the list (0 for a test whose item is absent)."""
        return self._mean(self.rr_sum)

    @property
    def auc(self) -> float:
        """Mean sampled AUC over the tests that had negatives (0 if none had)."""
        return self.auc_sum / self.n_auc if self.n_auc else 0.0

    def figures(self) -> dict[str, float | int]:
        """The quality figures of the JSON (rounded) and the number of tests."""
        out: dict[str, float | int] = {}
        for c in CUTOFFS:
            out[f"recall@{c}"] = round(self.recall(c), 5)
        out["ndcg@20"] = round(self.ndcg20, 5)
        for c in CUTOFFS:
            out[f"precision@{c}"] = round(self.precision(c), 5)
        for c in CUTOFFS:
            out[f"f1@{c}"] = round(self.f1(c), 5)
        out["mrr"] = round(self.mrr, 5)
        out["hit_rate@20"] = round(self.hit_rate(20), 5)
        out["auc_sampled"] = round(self.auc, 5)
        out["evaluated"] = self.n_evaluated
        return out


@dataclass
class ModelResult:
    """Prequential figures of one model: quality over all tests (``overall``) and per
    slice (``slices``: cold users, cold items, repeat items, items new to the user),
    catalogue coverage, speed."""

    name: str
    overall: SliceResult = field(default_factory=SliceResult)
    slices: dict[str, SliceResult] = field(
        default_factory=lambda: {s: SliceResult() for s in SLICES})
    auc_from_scores: bool = False
    recommended: set[str] = field(default_factory=set)
    n_items: int = 0
    learn_s: float = 0.0
    n_learned: int = 0
    rec_ms: list[float] = field(default_factory=list)
    hit_series: list[int] = field(default_factory=list)
    drifts: int = 0

    @property
    def n_evaluated(self) -> int:
        """Tests over the whole run."""
        return self.overall.n_evaluated

    def recall(self, k: int) -> float:
        """Recall@k over all tests."""
        return self.overall.recall(k)

    @property
    def coverage(self) -> float:
        """Share of the catalogue that appeared in at least one list."""
        return len(self.recommended) / self.n_items if self.n_items else 0.0

    @property
    def learn_events_per_s(self) -> float:
        """Learning throughput (events / s of learn time)."""
        return self.n_learned / self.learn_s if self.learn_s > 0 else 0.0

    def rec_percentile(self, q: float) -> float:
        """Recommend latency percentile (ms)."""
        return float(np.percentile(self.rec_ms, q)) if self.rec_ms else 0.0

    def summary(self) -> dict[str, Any]:
        """The JSON figures of ``freshrec replay``: quality over all tests, coverage,
        speed, then ``slices`` (the same quality figures per slice)."""
        out: dict[str, Any] = self.overall.figures()
        out.update({
            "coverage": round(self.coverage, 5),
            "learn_events_per_s": round(self.learn_events_per_s, 1),
            "recommend_p50_ms": round(self.rec_percentile(50), 4),
            "recommend_p99_ms": round(self.rec_percentile(99), 4),
            "drifts": self.drifts,
            "auc_method": "score_items" if self.auc_from_scores else "list",
            "slices": {name: s.figures() for name, s in self.slices.items()},
        })
        return out


def auc_from_scores(scores: np.ndarray) -> float:
    """AUC of ``scores[0]`` (the item) against ``scores[1:]`` (negatives): the share of
    negatives scored below it, ties counting 0.5.

    >>> auc_from_scores(np.array([2.0, 1.0, 3.0, 2.0, 0.0]))
    0.625
    """
    t, neg = scores[0], scores[1:]
    return float((np.count_nonzero(neg < t) + 0.5 * np.count_nonzero(neg == t)) / neg.size)


def auc_from_list(ids: Sequence[str], rank: int, negatives: Collection[str]) -> float:
    """AUC of the item at ``rank`` in the list ``ids`` (-1: absent) against
    ``negatives``, for a model without ``score_items``: everything outside the list ties
    below the list, so a negative listed above the item wins, a listed item beats every
    unlisted negative, and an unlisted item ties (0.5) with every unlisted negative.

    >>> auc_from_list(["a", "n1", "b"], 2, {"n1", "n2", "n3", "n4"})  # n1 above: 3/4
    0.75
    >>> auc_from_list(["a", "n1"], -1, {"n1", "n2", "n3", "n4"})  # 3 ties of 4: 1.5/4
    0.375
    """
    if rank >= 0:
        above = sum(1 for i in ids[:rank] if i in negatives)
        return (len(negatives) - above) / len(negatives)
    listed = sum(1 for i in ids if i in negatives)
    return 0.5 * (len(negatives) - listed) / len(negatives)
