"""River around the model: streaming user clusters, drift detection, rolling metrics.

>>> import numpy as np
>>> mon = DriftMonitor()
>>> changed = [mon.update(i < 600) for i in range(1200)]
>>> any(changed[600:]), mon.drifts >= 1
(True, True)
>>> m = RollingMetrics(window=4)
>>> for hit in (True, False, True, True, False):
...     m.update(hit)
>>> m.hit_rate, m.n
(0.5, 5)
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Hashable, Iterable, Sequence

import numpy as np
from river import cluster, drift, stats, utils

from online_models.replica import logaddexp

LN2 = math.log(2.0)


class UserClusters:
    """Streaming k-means (``river.cluster.KMeans``) over user query vectors, with a
    time-decayed popularity list per cluster: what people like this user touch now.

    Cheap to rebuild from the stream, and picklable (:meth:`to_bytes`) for checkpoints.

    >>> uc = UserClusters(n_clusters=2, dim=2, seed=0)
    >>> for t in range(200):
    ...     ca = uc.learn(np.array([1.0, 0.0]), "a", 1.0, t * 1000)
    ...     cb = uc.learn(np.array([0.0, 1.0]), "b", 1.0, t * 1000)
    >>> uc.popular(np.array([0.9, 0.1]), 1)[0][0]
    'a'
    """

    def __init__(self, n_clusters: int = 8, dim: int = 32, seed: int = 0,
                 half_life_s: float = 3600.0, top_n: int = 50, learn_every: int = 16) -> None:
        self.dim = dim
        self.kmeans = cluster.KMeans(n_clusters=n_clusters, halflife=0.05, sigma=0.1, seed=seed)
        self.counts: list[dict[str, float]] = [{} for _ in range(n_clusters)]
        self._k = LN2 / (half_life_s * 1000.0)
        self._t0: float | None = None
        self.top_n = top_n
        self.learn_every = learn_every
        self._n = 0
        self._top: dict[int, tuple[int, list[tuple[str, float]]]] = {}
        self._version = [0] * n_clusters
        self._center_matrix: np.ndarray | None = None

    def _x(self, vector: np.ndarray) -> dict[int, float]:
        return dict(enumerate(vector.tolist()))

    def _centers(self) -> np.ndarray:
        if self._center_matrix is None:
            centers = self.kmeans.centers
            self._center_matrix = np.array(
                [[centers[c].get(i, 0.0) for i in range(self.dim)] for c in sorted(centers)],
                dtype=np.float32)
        return self._center_matrix

    def assign(self, vector: np.ndarray) -> int:
        """Cluster of a vector (nearest River centre, computed in numpy)."""
        d = self._centers() - vector[None, :]
        return int(np.argmin(np.einsum("ij,ij->i", d, d)))

    def learn(self, vector: np.ndarray, item_id: str, weight: float, ts_ms: int) -> int:
        """Update the clustering (every ``learn_every``-th call) and the cluster's popularity."""
        return self.learn_many(vector, [(item_id, weight)], ts_ms)

    def learn_many(self, vector: np.ndarray, taken: Sequence[tuple[str, float]], ts_ms: int
                   ) -> int:
        """:meth:`learn` for each (item, weight) of ``taken`` with the same vector; returns
        the last one's cluster. The vector's cluster is only looked up again after the
        centres moved."""
        c = -1
        for item_id, weight in taken:
            self._n += 1
            if self._n % self.learn_every == 1 or self.learn_every == 1:
                self.kmeans.learn_one(self._x(vector))
                self._center_matrix = None
                c = -1
            if c < 0:
                c = self.assign(vector)
            if weight > 0:
                if self._t0 is None:
                    self._t0 = float(ts_ms)
                lt = math.log(weight) + (ts_ms - self._t0) * self._k
                d = self.counts[c]
                old = d.get(item_id)
                d[item_id] = lt if old is None else logaddexp(old, lt)
                self._version[c] += 1
                if len(d) > 20 * self.top_n:  # keep memory bounded: drop the coldest half
                    keep = sorted(d.items(), key=lambda kv: kv[1], reverse=True)[: 10 * self.top_n]
                    self.counts[c] = dict(keep)
        return c

    def popular(self, vector: np.ndarray, n: int) -> list[tuple[str, float]]:
        """Top ``n`` items of the vector's cluster with scores in (0, 1] (best = 1); of the
        nearest cluster with any, while the vector's own has none yet."""
        if self._t0 is None:
            return []
        d = self._centers() - vector[None, :]
        c = next((int(k) for k in np.argsort(np.einsum("ij,ij->i", d, d), kind="stable")
                  if self.counts[k]), None)
        if c is None:
            return []
        hit = self._top.get(c)
        # The sorted list is reused for 32 updates of a full cluster; a cluster still filling
        # up (a new deployment, a quiet segment) is re-sorted at every change.
        behind = -1 if hit is None else self._version[c] - hit[0]
        if behind < 0 or behind >= 32 or (behind and len(hit[1]) < self.top_n):
            items = sorted(self.counts[c].items(), key=lambda kv: kv[1], reverse=True)
            items = items[: self.top_n]
            top = items[0][1] if items else 0.0
            hit = (self._version[c], [(i, math.exp(v - top)) for i, v in items])
            self._top[c] = hit
        return hit[1][:n]

    def to_bytes(self) -> bytes:
        """Pickle for checkpoints (all plain Python / River objects)."""
        return pickle.dumps(self)

    @staticmethod
    def from_bytes(blob: bytes) -> UserClusters:
        """Inverse of :meth:`to_bytes` (only load bytes this process wrote)."""
        obj = pickle.loads(blob)
        assert isinstance(obj, UserClusters)
        return obj


class DriftMonitor:
    """ADWIN (``river.drift.ADWIN``) over the rolling hit stream; counts detected drops.

    Parameters
    ----------
    delta : float
        ADWIN confidence; smaller = fewer false alarms.
    """

    def __init__(self, delta: float = 0.002) -> None:
        self.adwin = drift.ADWIN(delta=delta)
        self.drifts = 0

    def update(self, hit: bool | float) -> bool:
        """Add one outcome; ``True`` when a drop in the hit rate is detected (a rise is
        the model learning, not a reason to restart its schedule)."""
        before = self.adwin.estimation
        self.adwin.update(float(hit))
        if self.adwin.drift_detected and self.adwin.estimation < before:
            self.drifts += 1
            return True
        return False


class RollingMetrics:
    """Rolling hit rate (``river.utils.Rolling`` of a mean) and cumulative counters."""

    def __init__(self, window: int = 1000) -> None:
        self.rolling = utils.Rolling(stats.Mean(), window_size=window)
        self.total = stats.Mean()
        self.n = 0

    def update(self, hit: bool | float) -> None:
        """Add one outcome."""
        self.rolling.update(float(hit))
        self.total.update(float(hit))
        self.n += 1

    @property
    def hit_rate(self) -> float:
        """Hit rate over the window."""
        return float(self.rolling.get())

    @property
    def cumulative(self) -> float:
        """Hit rate since the start."""
        return float(self.total.get())


class RollingMean:
    """Mean of the last ``window`` values, many at a time (a numpy ring buffer: per value,
    ``river.utils.Rolling`` costs ~10 us in a bundle's loop).

    >>> m = RollingMean(3)
    >>> m.update_many([1.0, 2.0]); m.mean
    1.5
    >>> m.update_many([3.0, 4.0, 5.0]); m.mean
    4.0
    """

    def __init__(self, window: int = 1000) -> None:
        self._buf = np.zeros(window)
        self._next = 0
        self._n = 0

    def update_many(self, values: Iterable[float] | np.ndarray) -> None:
        w = self._buf.shape[0]
        v = np.asarray(values, dtype=np.float64)[-w:]
        k = v.shape[0]
        self._buf[(self._next + np.arange(k)) % w] = v
        self._next = (self._next + k) % w
        self._n = min(self._n + k, w)

    @property
    def mean(self) -> float:
        return float(self._buf[:self._n].mean()) if self._n else 0.0


class PrequentialWindow:
    """Rolling Recall@k, Recall@10 and NDCG@k of shown lists against the next item.

    Test-then-learn: call :meth:`update` with the list a user was shown and the item of the
    event that followed it, before the model learns from that event. Outcomes are kept
    until a figure is read, then go into the windows at once (:class:`RollingMean`).

    >>> w = PrequentialWindow(k=20, window=100)
    >>> w.update(("a", "b", "c"), "b"), w.update(("a", "b"), "z")
    (True, False)
    >>> w.hit_rate, w.recall_at_10, round(w.ndcg, 3)
    (0.5, 0.5, 0.315)
    """

    def __init__(self, k: int, window: int = 1000) -> None:
        self.k = k
        self._windows = (RollingMean(window), RollingMean(window), RollingMean(window))
        self._outcomes: list[tuple[float, float, float]] = []  # not yet in the windows

    def update(self, shown: Sequence[Hashable], item: Hashable) -> bool:
        """Score one event against the list shown before it (item ids, or the same hash of
        each); returns whether it was a hit."""
        top = shown[: self.k]
        rank = top.index(item) if item in top else -1
        hit = rank >= 0
        self._outcomes.append((1.0 if hit else 0.0, 1.0 if 0 <= rank < 10 else 0.0,
                               1.0 / math.log2(rank + 2) if hit else 0.0))
        if len(self._outcomes) >= 4096:  # nobody reads the gauges: stay bounded
            self._settle()
        return hit

    def _settle(self) -> None:
        if self._outcomes:
            for window, values in zip(self._windows, zip(*self._outcomes, strict=True),
                                      strict=True):
                window.update_many(values)
            self._outcomes.clear()

    @property
    def hit_rate(self) -> float:
        self._settle()
        return self._windows[0].mean

    @property
    def recall_at_10(self) -> float:
        self._settle()
        return self._windows[1].mean

    @property
    def ndcg(self) -> float:
        self._settle()
        return self._windows[2].mean
