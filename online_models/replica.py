"""The item replica: all item vectors as one numpy matrix, plus metadata and trending.

Every job instance keeps one read-only copy of the item side (fed by the
item-embedding changelog); the in-memory model owns one and applies gradients to it
directly. Scoring is a matrix-vector product plus a per-item static term (bias and
time-decayed log popularity); :mod:`online_models.ranking` takes the top-K.

>>> from online_models.config import ModelConfig
>>> rep = ItemReplica(ModelConfig(dim=4, seed=0))
>>> for i in range(5):
...     _ = rep.upsert(f"i{i}", meta={"category": "c" + str(i % 2)})
>>> rep.record_trend(rep.row("i3"), 5.0, 1_000)
>>> [rep.ids[r] for r in rep.trending_rows(2, now_ms=1_000)][:1]
['i3']
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from online_models.config import ModelConfig
from online_models.negatives import NegativePool
from online_models.tables import EmbeddingTable, content_vector

LN2 = math.log(2.0)
# Trending weight a brand-new item starts with (a small "new listing" bonus).
NEW_ITEM_TREND = 0.1
_TREND_CACHE_EVERY = 256


def logaddexp(a: float, b: float) -> float:
    """``log(exp(a) + exp(b))`` on Python floats (either may be ``-inf``).

    >>> round(logaddexp(0.0, 0.0), 6), logaddexp(float("-inf"), 2.0)
    (0.693147, 2.0)
    """
    if a < b:
        a, b = b, a
    if b == -math.inf:
        return a
    return a + math.log1p(math.exp(b - a))


def _grow(arr: np.ndarray, n: int, fill: Any) -> np.ndarray:
    if n <= arr.shape[0]:
        return arr
    new = np.full(max(n, int(arr.shape[0] * 1.25) + 16), fill, dtype=arr.dtype)
    new[: arr.shape[0]] = arr
    return new


class ItemReplica:
    """Item vectors, biases, trending counters and metadata, indexed by row.

    Parameters
    ----------
    config : ModelConfig
        Supplies ``dim``, ``seed``, ``pop_weight``, ``trend_half_life_s``, ``init_scale``.
    capacity : int
        Initial rows.
    """

    def __init__(self, config: ModelConfig, capacity: int = 1024) -> None:
        self.config = config
        self.table = EmbeddingTable(config.dim, capacity, config.seed, config.init_scale)
        self.bias = np.zeros(capacity, dtype=np.float32)
        self.trend = np.full(capacity, -np.inf, dtype=np.float64)
        self.static = np.zeros(capacity, dtype=np.float32)
        self.blocked = np.zeros(capacity, dtype=bool)
        self.category_code = np.full(capacity, -1, dtype=np.int32)
        # What the blend's same_brand and price_near read (NaN: no price).
        self.brand_code = np.full(capacity, -1, dtype=np.int32)
        self.price = np.full(capacity, np.nan, dtype=np.float32)
        self._brand_index: dict[str, int] = {}
        # Breaks ties of trend by id (its CRC-32), not by the order rows arrived in, which
        # differs between replicas and after a restore: the trending rows are the same.
        self.tie_key = np.zeros(capacity, dtype=np.uint32)
        self.categories: list[str] = []
        self._category_index: dict[str, int] = {}
        self.category_rows: dict[int, list[int]] = {}
        self.meta: list[dict[str, Any]] = []
        self._k = LN2 / (config.trend_half_life_s * 1000.0)  # per ms
        self._t0: float | None = None
        self.negatives = NegativePool(config.seed, config.neg_pop_alpha)
        # Set by online_models.ann once the catalogue is large enough for approximate top-K;
        # rows whose vector or static score changed since the index last saw them.
        self.ann: Any = None
        self._changed: set[int] | None = None
        # Every write to what the dense scores read (vectors, bias, trend, availability):
        # a memo of a user's scores is valid while this stays the same.
        self.writes = 0
        self._version = 0
        self._trend_cache: dict[Any, tuple[int, np.ndarray]] = {}
        self._new_cache: dict[tuple[int, int], tuple[int, int, np.ndarray]] = {}
        self._fresh_cache: tuple[int, int, int, np.ndarray, np.ndarray] | None = None

    # -- ids and rows -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.table)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.table.index

    @property
    def ids(self) -> list[str]:
        """Row -> item id."""
        return self.table.ids

    @property
    def vectors(self) -> np.ndarray:
        """``len x dim`` float32 view of the item vectors."""
        return self.table.vectors

    def row(self, item_id: str) -> int:
        """Row of an item, or ``-1`` if unknown."""
        return self.table.index.get(item_id, -1)

    def _log_time(self, ts_ms: int) -> float:
        if self._t0 is None:
            self._t0 = float(ts_ms)
        return (ts_ms - self._t0) * self._k

    def _category_code(self, category: str | None) -> int:
        if category is None:
            return -1
        code = self._category_index.get(category)
        if code is None:
            code = len(self.categories)
            self.categories.append(category)
            self._category_index[category] = code
        return code

    def _refresh_static(self, row: int) -> None:
        t = self.trend[row]
        self.static[row] = self.bias[row] + self.config.pop_weight * (t if t > -1e300 else -50.0)
        self.writes += 1
        if self._changed is not None:
            self._changed.add(row)

    def track_changes(self) -> None:
        """Start recording changed rows (for :meth:`take_changed`)."""
        if self._changed is None:
            self._changed = set()

    def mark_changed(self, rows: Iterable[int]) -> None:
        """Rows whose vectors were written directly (in-process item learning)."""
        self.writes += 1
        if self._changed is not None:
            self._changed.update(int(r) for r in rows)

    def take_changed(self) -> np.ndarray:
        """Rows changed since the last call (every upsert, trend or vector change)."""
        if not self._changed:
            return np.zeros(0, dtype=np.int64)
        rows = np.fromiter(self._changed, dtype=np.int64, count=len(self._changed))
        self._changed.clear()
        return rows

    def upsert(
        self,
        item_id: str,
        vector: np.ndarray | None = None,
        meta: Mapping[str, Any] | None = None,
        bias: float | None = None,
        trend: float | None = None,
        acc: float | None = None,
        ts_ms: int | None = None,
    ) -> int:
        """Insert or update one item; returns its row.

        A new item without ``vector`` gets its content vector from ``meta`` (category,
        brand, price), and a small new-listing trend so it can surface before any
        interaction. Metadata keys given in ``meta`` replace the stored ones.
        """
        row = self.table.index.get(item_id, -1)
        new = row < 0
        if new:
            m = dict(meta or {})
            if vector is None:
                vector = self.cold_item_vector(item_id, m)
            row = self.table.add(item_id, vector, 0.0 if acc is None else acc)
            n = row + 1
            self.bias = _grow(self.bias, n, 0.0)
            self.trend = _grow(self.trend, n, -np.inf)
            self.static = _grow(self.static, n, 0.0)
            self.blocked = _grow(self.blocked, n, False)
            self.category_code = _grow(self.category_code, n, -1)
            self.brand_code = _grow(self.brand_code, n, -1)
            self.price = _grow(self.price, n, np.nan)
            self.tie_key = _grow(self.tie_key, n, 0)
            self.tie_key[row] = zlib.crc32(item_id.encode("utf-8"))
            self.meta.append({})
            if trend is None and ts_ms is not None:
                trend = math.log(NEW_ITEM_TREND) + self._log_time(ts_ms)
        else:
            if vector is not None:
                self.table.vectors[row] = vector
            if acc is not None:
                self.table.accumulators[row] = acc
        if meta:
            stored = self.meta[row]
            stored.update({k: v for k, v in meta.items() if v is not None})
            code = self._category_code(stored.get("category"))
            old = int(self.category_code[row])
            if code != old:
                if old >= 0:
                    self.category_rows[old].remove(row)
                if code >= 0:
                    self.category_rows.setdefault(code, []).append(row)
                self.category_code[row] = code
            self.blocked[row] = stored.get("available") is False
            brand = stored.get("brand")
            if brand is not None:
                self.brand_code[row] = self._brand_index.setdefault(brand, len(self._brand_index))
            price = stored.get("price")
            if type(price) in (int, float) and price > 0:
                self.price[row] = price
        if bias is not None:
            self.bias[row] = bias
        if trend is not None:
            self.trend[row] = trend
        self._refresh_static(row)
        self._version += 1
        return row

    def cold_item_vector(self, item_id: str, meta: Mapping[str, Any] | None = None,
                         mean: np.ndarray | None = None) -> np.ndarray:
        """Vector of a new item from its metadata: the hashed content vector plus the mean
        learned vector of its category's items (so it lives where its category's items
        have moved), before any interaction. The job's item operator uses this too.
        ``mean``: that category mean, when the caller has it already."""
        m = meta or {}
        cfg = self.config
        content = content_vector(item_id, cfg.dim, cfg.seed, m.get("category"),
                                 m.get("brand"), m.get("price"), cfg.init_scale)
        if mean is None:
            mean = self.category_mean(m.get("category"))
        return content if mean is None else mean + content

    def category_mean(self, category: str | None) -> np.ndarray | None:
        """Mean learned vector of a category's latest 64 items; ``None`` if none learned."""
        code = self._category_index.get(category, -1)  # type: ignore[arg-type]
        rows = self.category_rows.get(code, []) if code >= 0 else []
        if not rows:
            return None
        sample = np.asarray(rows[-64:], dtype=np.int64)
        # Learned rows only (a row's Adagrad accumulator grows with its first step): cold
        # neighbours add noise, and whichever of them arrived first would decide it.
        sample = sample[self.table._acc[sample] > 0]
        if not sample.shape[0]:
            return None
        vec = self.table._data[sample].sum(axis=0)
        vec *= np.float32(1.0 / sample.shape[0])
        return vec

    def ensure(self, item_id: str, meta: Mapping[str, Any] | None = None,
               ts_ms: int | None = None) -> int:
        """Row of an item, creating it from ``meta`` on first use (unseen ids get vectors)."""
        row = self.table.index.get(item_id, -1)
        if row >= 0:
            if meta and not self.meta[row]:
                self.upsert(item_id, meta=meta)
            return row
        return self.upsert(item_id, meta=meta, ts_ms=ts_ms)

    # -- item-side learning (in-process owner) --------------------------------------------
    def record_trend(self, row: int, weight: float, ts_ms: int) -> None:
        """Add ``weight`` at event time ``ts_ms`` to an item's forward-decayed counter."""
        if weight <= 0:
            return
        self.trend[row] = logaddexp(float(self.trend[row]),
                                    math.log(weight) + self._log_time(ts_ms))
        self._refresh_static(row)
        self._version += 1

    def trend_value(self, row: int, now_ms: int) -> float:
        """Current decayed count of an item."""
        t = float(self.trend[row])
        return 0.0 if t == -math.inf else math.exp(t - self._log_time(now_ms))

    def log_time(self, ts_ms: int) -> float:
        """``ts_ms`` in the forward-decay log scale (``ln2 * (t - t0) / half_life``)."""
        return self._log_time(ts_ms)

    # -- negatives ----------------------------------------------------------------------
    def sample_negatives(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` rows drawn proportionally to ``trend ** alpha`` blended with uniform.

        Rows come from a pool drawn in bulk from that distribution (cheap per event); which
        rows of the pool a call gets depends on ``rng`` alone, so a caller with its own
        generator (one per user in the job) gets the same rows from the same pool whatever
        other callers drew. The pool is redrawn, with the replica's own generator, once as
        many rows as it holds were drawn and the replica changed since.
        """
        pool = self.negative_pool(n)
        return pool[rng.integers(0, pool.shape[0], n)]

    def negative_pool(self, n_draws: int) -> np.ndarray:
        """The pool :meth:`sample_negatives` picks from, counting ``n_draws`` picks against
        its redraw; callers pick positions of their own (the bundle learner hashes them)."""
        return self.negatives.pool(self.table.ids, self.trend[: len(self)], self._version,
                                   n_draws)

    # -- trending -------------------------------------------------------------------------
    def trending_rows(self, n: int, category: str | None = None,
                      now_ms: int | None = None) -> np.ndarray:
        """Up to ``n`` available rows with the highest decayed count (overall or in a
        category), ties in id order (:attr:`tie_key`).

        Cached and recomputed after every 256 replica changes.
        """
        del now_ms  # ranking by forward-decayed counts does not depend on the clock
        key = (n, category)
        hit = self._trend_cache.get(key)
        if hit is not None and self._version - hit[0] < _TREND_CACHE_EVERY:
            return hit[1]
        if category is None:
            cand = np.arange(len(self))
        else:
            code = self._category_index.get(category, -1)
            cand = np.asarray(self.category_rows.get(code, []), dtype=np.int64)
        if cand.size and n > 0:
            t = self.trend[cand]
            t = np.where(self.blocked[cand] | ~np.isfinite(t), -np.inf, t)
            m = min(n, cand.size)
            # The n-th highest trend and every row tied with it, then ordered.
            part = (np.flatnonzero(t >= np.partition(t, cand.size - m)[cand.size - m])
                    if m < cand.size else np.arange(cand.size))
            part = part[np.lexsort((self.tie_key[cand[part]], -t[part]))][:m]
            rows = cand[part][np.isfinite(t[part])]
        else:
            rows = cand[:0]
        self._trend_cache[key] = (self._version, rows)
        return rows

    def new_rows(self, category_code: int, n: int) -> np.ndarray:
        """Up to ``n`` available rows of a category that were never learned (no interaction
        yet), the newest listing first (new-listing trend, then the id's CRC-32: the same
        order on every replica, whatever order the rows arrived in). Cached like
        :meth:`trending_rows`."""
        key = (category_code, n)
        hit = self._new_cache.get(key)
        # A new row is news: recomputed then, and after every 256 other changes.
        if hit is not None and hit[1] == len(self) and self._version - hit[0] < _TREND_CACHE_EVERY:
            return hit[2]
        cand = np.asarray(self.category_rows.get(category_code, []), dtype=np.int64)
        fresh = cand[(self.table._acc[cand] == 0) & ~self.blocked[cand]] if cand.size else cand
        rows = fresh[np.lexsort((self.tie_key[fresh], -self.trend[fresh]))][:n]
        self._new_cache[key] = (self._version, len(self), rows)
        return rows

    def fresh_rows(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The newest ``n`` available, never-learned rows, oldest first, and their vectors
        scaled to unit length. Ordered like :meth:`new_rows` (new-listing trend, then the
        id's CRC-32), not by the order rows arrived in, which differs between replicas and
        after a restore. Cached like :meth:`new_rows`; rows learned or withdrawn since are
        left out at each call."""
        hit = self._fresh_cache
        if (hit is None or hit[0] != n or hit[2] != len(self)
                or self._version - hit[1] >= _TREND_CACHE_EVERY):
            size = len(self)
            cand = np.flatnonzero((self.table._acc[:size] == 0) & ~self.blocked[:size])
            trend = self.trend[cand]
            if cand.shape[0] > n:  # the n newest listings, with every row tied at the cut
                cut = np.partition(trend, cand.shape[0] - n)[cand.shape[0] - n]
                cand, trend = cand[trend >= cut], trend[trend >= cut]
            rows = cand[np.lexsort((self.tie_key[cand], -trend))[:n]][::-1].copy()
            unit = self.table._data[rows]
            norm = np.sqrt(np.einsum("ij,ij->i", unit, unit))
            unit = unit / np.maximum(norm, np.float32(1e-12))[:, None]
            hit = self._fresh_cache = (n, self._version, len(self), rows, unit)
        rows, unit = hit[3], hit[4]
        learned = self.table._acc[rows] != 0
        if learned.any():  # for good (an accumulator only grows): copied once, not per call
            rows, unit = rows[~learned], unit[~learned]
            self._fresh_cache = (hit[0], hit[1], hit[2], rows, unit)
        blocked = self.blocked[rows]  # may be listed again: filtered at each call
        return (rows[~blocked], unit[~blocked]) if blocked.any() else (rows, unit)

    # -- scoring --------------------------------------------------------------------------
    def scores(self, query: np.ndarray) -> np.ndarray:
        """``V @ query + static`` for every row (a new float32 array).

        The product runs in torch (one thread's matrix-vector kernel is several times
        faster than numpy's here, and ``topk`` beats ``argpartition``).
        """
        import torch

        n = len(self)
        s = torch.mv(torch.from_numpy(self.table._data[:n]),
                     torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32)))
        s += torch.from_numpy(self.static[:n])
        return s.numpy()

    def vectors_tensor(self) -> Any:
        """The used rows of the item matrix as a torch tensor (shares memory)."""
        import torch

        return torch.from_numpy(self.table._data[: len(self)])

    def static_tensor(self) -> Any:
        """Per-row static score (bias + pop term) as a new torch tensor, ``-inf`` for
        unavailable rows."""
        import torch

        n = len(self)
        st = torch.from_numpy(self.static[:n].copy())
        blocked = self.blocked[:n]
        if blocked.any():
            st[torch.from_numpy(blocked)] = -math.inf
        return st
