"""Negatives for the pairwise loss: a pool of item rows drawn in bulk in proportion to
``trend ** alpha`` blended with uniform, and the positions each event takes from it.

>>> pool = NegativePool(seed=0, alpha=0.5)
>>> rows = pool.pool(["b", "a", "c"], np.array([0.0, 2.0, -np.inf]), version=1, n_draws=4)
>>> rows.shape, sorted(set(rows.tolist())) == [0, 1, 2]
((4096,), True)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

POOL_SIZE = 4096


class NegativePool:
    """Rows drawn in bulk, redrawn with its own generator once as many rows as it holds were
    picked and the items changed since (their ``version``)."""

    def __init__(self, seed: int, alpha: float) -> None:
        self.alpha = alpha
        self._rng = np.random.default_rng(seed)
        self._rows = np.zeros(0, dtype=np.int64)
        self._drawn = 0
        self._version = -1
        self._rows_in_id_order = np.zeros(0, dtype=np.int64)

    def pool(self, ids: Sequence[str], trend: np.ndarray, version: int, n_draws: int
             ) -> np.ndarray:
        """The current pool for items ``ids`` (by row) with log trends ``trend``, counting
        ``n_draws`` picks against its redraw."""
        stale = self._drawn >= POOL_SIZE and self._version != version
        if self._rows.shape[0] == 0 or stale or (self._version == -1 and len(ids)):
            self._refill(ids, trend, version)
        self._drawn += n_draws
        return self._rows

    def _rows_by_id(self, ids: Sequence[str]) -> np.ndarray:
        """Rows in item-id order, re-sorted only after rows were added."""
        n = len(ids)
        if self._rows_in_id_order.shape[0] != n:
            self._rows_in_id_order = np.asarray(sorted(range(n), key=ids.__getitem__),
                                                dtype=np.int64)
        return self._rows_in_id_order

    def _refill(self, ids: Sequence[str], trend: np.ndarray, version: int) -> None:
        size = len(ids)
        rng = self._rng
        # -1 marks a pool drawn from an empty replica: redrawn as soon as rows exist.
        self._version = version if size else -1
        self._drawn = 0
        if size == 0:
            self._rows = np.zeros(POOL_SIZE, dtype=np.int64)
            return
        # Drawn over the items in id order: the same items and weights give the same pool
        # whatever order the items arrived in (and so whichever rows they got).
        order = self._rows_by_id(ids)
        if self.alpha <= 0:
            self._rows = order[rng.integers(0, size, POOL_SIZE)]
            return
        t = trend[order]
        finite = np.isfinite(t)
        w = np.zeros(size)
        if finite.any():
            w[finite] = np.exp(self.alpha * (t[finite] - t[finite].max()))
        w = w / w.sum() if w.sum() > 0 else w
        p = 0.5 * w + 0.5 / size if w.sum() > 0 else np.full(size, 1.0 / size)
        cdf = np.cumsum(p)
        picks = np.minimum(np.searchsorted(cdf, rng.random(POOL_SIZE) * cdf[-1]), size - 1)
        self._rows = order[picks]


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, element-wise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def negative_positions(seed: int, user_hash: np.ndarray, n_events: np.ndarray, k: int,
                       pool_size: int) -> np.ndarray:
    """``len(user_hash) x k`` positions in the negatives pool, a pure function of the seed,
    the user and the user's event count (so a user's draws repeat after a restore).

    >>> a = negative_positions(1, np.array([7, 7]), np.array([0, 1]), 3, 100)
    >>> a.shape, bool((a[0] != a[1]).any()), bool((a < 100).all())
    ((2, 3), True, True)
    >>> bool((negative_positions(1, np.array([7]), np.array([1]), 3, 100) == a[1]).all())
    True
    """
    base = (np.asarray(user_hash, dtype=np.uint64) << np.uint64(32)) ^ np.asarray(
        n_events, dtype=np.uint64) ^ _splitmix64(np.array([seed], dtype=np.uint64))
    draws = _splitmix64(base[:, None] * np.uint64(k + 1) + np.arange(k, dtype=np.uint64))
    return (draws % np.uint64(max(pool_size, 1))).astype(np.int64)
