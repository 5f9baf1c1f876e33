"""Prequential (test-then-learn) evaluation, as in DESIGN §3 (Vinagre et al. 2014).

For each positive interaction whose user has history, every model ranks all known
items except the user's purchases (the evaluator passes them, so all models are
judged alike); a hit is the event's item in the top N; then every model learns the
event. All models see the same stream in the same run.

>>> from online_models.baselines import PopularityModel
>>> from schemas.events import Event
>>> evs = [Event(f"e{n}", "view", n * 1000, user_id=f"u{n % 4}", item_id=f"i{n % 3}")
...        for n in range(60)]
>>> res = prequential({"popularity": PopularityModel()}, evs)
>>> r = res["popularity"]
>>> r.n_evaluated, 0.0 <= r.recall(20) <= 1.0, r.coverage > 0
(56, True, True)
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from schemas.events import INTERACTION_TYPES, Event

_INTERACTIONS = frozenset(INTERACTION_TYPES)
CUTOFFS = (10, 20)


@dataclass
class ModelResult:
    """Prequential figures of one model."""

    name: str
    n_evaluated: int = 0
    hits: dict[int, int] = field(default_factory=lambda: {k: 0 for k in CUTOFFS})
    ndcg_sum: float = 0.0
    recommended: set[str] = field(default_factory=set)
    n_items: int = 0
    learn_s: float = 0.0
    n_learned: int = 0
    rec_ms: list[float] = field(default_factory=list)
    hit_series: list[int] = field(default_factory=list)
    ts_series: list[int] = field(default_factory=list)
    drifts: int = 0

    def recall(self, k: int) -> float:
        """Recall@k (= hit rate, one relevant item per test)."""
        return self.hits[k] / self.n_evaluated if self.n_evaluated else 0.0

    @property
    def ndcg20(self) -> float:
        """NDCG@20."""
        return self.ndcg_sum / self.n_evaluated if self.n_evaluated else 0.0

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

    def summary(self) -> dict[str, float]:
        """The JSON figures of ``freshrec replay``."""
        return {
            "recall@10": round(self.recall(10), 5),
            "recall@20": round(self.recall(20), 5),
            "ndcg@20": round(self.ndcg20, 5),
            "coverage": round(self.coverage, 5),
            "learn_events_per_s": round(self.learn_events_per_s, 1),
            "recommend_p50_ms": round(self.rec_percentile(50), 4),
            "recommend_p99_ms": round(self.rec_percentile(99), 4),
            "evaluated": self.n_evaluated,
            "drifts": self.drifts,
        }


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
) -> dict[str, ModelResult]:
    """Run test-then-learn over ``events`` for several models at once.

    Parameters
    ----------
    models : mapping name -> model
        Objects with ``learn_one``, ``recommend`` and ``n_items`` (and optionally
        ``observe(hit)``, fed with the model's own hits: drift detection).
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

    Returns
    -------
    dict name -> ModelResult
    """
    results = {name: ModelResult(name) for name in models}
    has_history: set[str] = set()
    purchased: dict[str, set[str]] = {}
    eligible = 0
    perf = time.perf_counter
    for n, ev in enumerate(events):
        user, item = ev.user_id, ev.item_id
        test = n >= warmup and (
            ev.event_type in _INTERACTIONS and ev.event_type not in ("unfavorite",
                                                                     "remove_from_cart")
            and user is not None and item is not None and user in has_history
            and item not in purchased.get(user, ())
        )
        if test:
            eligible += 1
            test = eligible % eval_every == 0
        for name, model in models.items():
            res = results[name]
            if test:
                t0 = perf()
                recs = model.recommend(user, k, exclude=purchased.get(user, ()))
                res.rec_ms.append((perf() - t0) * 1000.0)
                ids = [r.item_id for r in recs]
                res.recommended.update(ids)
                rank = ids.index(item) if item in ids else -1
                res.n_evaluated += 1
                for c in CUTOFFS:
                    if 0 <= rank < c:
                        res.hits[c] += 1
                if 0 <= rank < 20:
                    res.ndcg_sum += 1.0 / math.log2(rank + 2)
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
        if ev.event_type in _INTERACTIONS and user is not None and item is not None:
            has_history.add(user)
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
