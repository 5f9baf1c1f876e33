"""Prequential (test-then-learn) evaluation (Vinagre et al. 2014).

For each positive interaction whose user has history, every model ranks all known
items except the user's purchases (the evaluator passes them, so all models are
judged alike); a hit is the event's item in the top N; then every model learns the
event. All models see the same stream in the same run.

Each test has one relevant item (the event's), so Recall@k is the hit rate, Precision@k
is Recall@k / k and MRR is the mean of 1 / rank (0 when the item is not in the list).
The sampled AUC ranks the item against :data:`NEGATIVES` items drawn once per test,
uniformly from the items seen so far in the stream (a seeded generator, the same draw for
every model; see :func:`prequential`). The figures are also kept for slices of the
tests: cold users (fewer than :data:`COLD_BELOW` earlier interactions in the stream), cold
items (the tested item has fewer than :data:`COLD_BELOW` earlier interactions), and
whether the user had interacted with the item before (``repeat_items``) or not
(``new_to_user``): the share of repeat tests bounds what repeat consumption alone can
reach, and ``new_to_user`` is where a model must generalise.

>>> from online_models.baselines import PopularityModel
>>> from schemas.events import Event
>>> evs = [Event(f"e{n}", "view", n * 1000, user_id=f"u{n % 4}", item_id=f"i{n % 3}")
...        for n in range(60)]
>>> res = prequential({"popularity": PopularityModel()}, evs)
>>> r = res["popularity"]
>>> r.n_evaluated, 0.0 <= r.recall(20) <= 1.0, r.coverage > 0
(56, True, True)
>>> r.slices["cold_users"].n_evaluated  # u0..u3 with 1 or 2 earlier events: 2 tests each
8
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from schemas.events import INTERACTION_TYPES, Event

_INTERACTIONS = frozenset(INTERACTION_TYPES)
CUTOFFS = (10, 20)
NEGATIVES = 100
COLD_BELOW = 3
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
    ts_series: list[int] = field(default_factory=list)
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


def sample_negatives(rng: np.random.Generator, pool: Sequence[str], target: str,
                     exclude: Collection[str], n: int = NEGATIVES) -> list[str]:
    """Up to ``n`` distinct items drawn uniformly from ``pool`` (distinct ids), leaving
    out ``target`` and ``exclude``.

    >>> rng = np.random.default_rng(0)
    >>> sorted(sample_negatives(rng, ["a", "b", "c", "d"], "a", {"b"}))
    ['c', 'd']
    >>> len(sample_negatives(rng, [f"i{j}" for j in range(500)], "i0", set(), 100))
    100
    """
    if n <= 0 or not pool:
        return []
    # A uniform ordered sample without replacement stays uniform over what survives the
    # filter; drawing n plus as many as the filter can drop leaves n whenever n are eligible.
    size = min(len(pool), n + 1 + len(exclude))
    drawn = (pool[j] for j in rng.choice(len(pool), size=size, replace=False).tolist())
    return [i for i in drawn if i != target and i not in exclude][:n]


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


class Progress:
    """A dependency-free progress line on a stream (stderr by default)."""

    def __init__(self, total: int | None, label: str = "replay", stream: TextIO | None = None,
                 every_s: float = 0.5) -> None:
        self.total, self.label = total, label
        self.stream = sys.stderr if stream is None else stream
        self.every_s = every_s
        self.start = self._last = time.perf_counter()
        self.n = 0

    def update(self, n: int = 1, note: str = "") -> None:
        self.n += n
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            self._draw(now, note)

    def _draw(self, now: float, note: str) -> None:
        rate = self.n / max(now - self.start, 1e-9)
        if self.total:
            frac = min(self.n / self.total, 1.0)
            bar = "#" * int(frac * 30)
            eta = (self.total - self.n) / rate if rate > 0 else 0.0
            line = (f"\r{self.label} [{bar:<30}] {self.n}/{self.total} {rate:,.0f} ev/s "
                    f"eta {eta:,.0f}s {note}")
        else:
            line = f"\r{self.label} {self.n} events {rate:,.0f} ev/s {note}"
        self.stream.write(line[:160])
        self.stream.flush()

    def close(self, note: str = "") -> None:
        self._draw(time.perf_counter(), note)
        self.stream.write("\n")
        self.stream.flush()


def prequential(
    models: Mapping[str, Any],
    events: Iterable[Event],
    k: int = 20,
    progress: Progress | None = None,
    eval_every: int = 1,
    on_event: Callable[[int], None] | None = None,
    warmup: int = 0,
    stop: Callable[[dict[str, ModelResult]], bool] | None = None,
    negatives: int = NEGATIVES,
    seed: int = 0,
) -> dict[str, ModelResult]:
    """Run test-then-learn over ``events`` for several models at once.

    Parameters
    ----------
    models : mapping name -> model
        Objects with ``learn_one``, ``recommend`` and ``n_items``; optionally
        ``observe(hit)``, fed with the model's own hits (drift detection), and
        ``score_items(user_id, item_ids) -> numpy array`` of the model's full scores,
        used for the sampled AUC (without it the AUC comes from the list, see
        :func:`auc_from_list`), and ``slice_of(user_id) -> str``, a slice of the model's
        own that each test of the user also counts in (an experiment's variant).
    events : iterable of Event
        Time-ordered stream.
    k : int
        List length (Recall@10 uses its first 10).
    progress : Progress, optional
        Progress line.
    eval_every : int
        Evaluate one eligible event in ``eval_every`` (all are learned from).
    on_event : callable, optional
        Called after each event with the number of eligible events so far.
    warmup : int
        The first ``warmup`` events are learned from without testing.
    stop : callable, optional
        Checked every 1,000 events; returning ``True`` ends the run early (tuning).
    negatives : int
        Negatives per test for the sampled AUC (0: no AUC). They are drawn once per test,
        uniformly without replacement from the items seen so far in the stream (any
        event's item), leaving out the tested item and the user's purchases, and every
        model is scored on the same draw.
    seed : int
        Seed of the negatives' generator (runs are reproducible).

    Returns
    -------
    dict name -> ModelResult
    """
    results = {name: ModelResult(name) for name in models}
    scorers = {name: getattr(model, "score_items", None) for name, model in models.items()}
    slicers = {name: getattr(model, "slice_of", None) for name, model in models.items()}
    for name, scorer in scorers.items():
        results[name].auc_from_scores = scorer is not None
    rng = np.random.default_rng(seed)
    user_n: dict[str, int] = {}  # earlier interactions per user / item (history, slices)
    item_n: dict[str, int] = {}
    pool: list[str] = []  # items seen so far, in a list for uniform draws
    pooled: set[str] = set()
    purchased: dict[str, set[str]] = {}
    interacted: dict[str, set[str]] = {}
    eligible = 0
    perf = time.perf_counter
    for n, ev in enumerate(events):
        user, item = ev.user_id, ev.item_id
        test = n >= warmup and (
            ev.event_type in _INTERACTIONS and ev.event_type not in ("unfavorite",
                                                                     "remove_from_cart")
            and user is not None and item is not None and user in user_n
            and item not in purchased.get(user, ())
        )
        if test:
            eligible += 1
            test = eligible % eval_every == 0
        if test:
            assert user is not None and item is not None
            exclude = purchased.get(user, set())
            negs = sample_negatives(rng, pool, item, exclude, negatives)
            neg_set = set(negs)
            cand = [item, *negs]
            repeat = item in interacted[user]
            parts = [s for s, inside in (("cold_users", user_n[user] < COLD_BELOW),
                                         ("cold_items", item_n.get(item, 0) < COLD_BELOW),
                                         ("repeat_items", repeat), ("new_to_user", not repeat))
                     if inside]
        for name, model in models.items():
            res = results[name]
            if test:
                t0 = perf()
                recs = model.recommend(user, k, exclude=exclude)
                res.rec_ms.append((perf() - t0) * 1000.0)
                ids = [r.item_id for r in recs]
                res.recommended.update(ids)
                rank = ids.index(item) if item in ids else -1
                auc: float | None = None
                if negs:
                    scorer = scorers[name]
                    auc = (auc_from_scores(np.asarray(scorer(user, cand), dtype=np.float64))
                           if scorer is not None else auc_from_list(ids, rank, neg_set))
                res.overall.add(rank, k, auc)
                for s in parts:
                    res.slices[s].add(rank, k, auc)
                slice_of = slicers[name]
                if slice_of is not None:
                    res.slices.setdefault(slice_of(user), SliceResult()).add(rank, k, auc)
                hit = int(0 <= rank < k)
                res.hit_series.append(hit)
                res.ts_series.append(ev.ts_ms)
                observe = getattr(model, "observe", None)
                if observe is not None and observe(bool(hit)):
                    res.drifts += 1
            t0 = perf()
            model.learn_one(ev)
            res.learn_s += perf() - t0
            res.n_learned += 1
        if item is not None and item not in pooled:
            pooled.add(item)
            pool.append(item)
        if ev.event_type in _INTERACTIONS and user is not None and item is not None:
            user_n[user] = user_n.get(user, 0) + 1
            item_n[item] = item_n.get(item, 0) + 1
            interacted.setdefault(user, set()).add(item)
            if ev.event_type == "purchase":
                purchased.setdefault(user, set()).add(item)
        if progress is not None:
            progress.update(1)
        if on_event is not None:
            on_event(eligible)
        if stop is not None and n % 1000 == 999 and stop(results):
            break
    for name, model in models.items():
        results[name].n_items = int(model.n_items)
    return results
