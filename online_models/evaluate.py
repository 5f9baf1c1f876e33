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

import sys
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, TextIO

import numpy as np

from online_models.eval_results import (
    ModelResult,
    SliceResult,
    auc_from_list,
    auc_from_scores,
)
from schemas.events import INTERACTION_TYPES, Event

_INTERACTIONS = frozenset(INTERACTION_TYPES)
NEGATIVES = 100
COLD_BELOW = 3


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
