"""Approximate top-K over the item replica for large catalogues (an HNSW index, usearch).

The replica scores an item ``q . v + static`` (``static`` = bias + popularity term), plus
sparse boosts. Exact scoring reads every row: at 1M items one query costs 10-17 ms (p50)
on one core (``docs/benchmarks.md``, "Catalogue scale"). :class:`ApproximateItemIndex` keeps
``[v, static]`` for every indexed row and searches it with ``[q, 1]`` by inner product, so
one graph search covers both terms; rows are upserted in place as vectors change online
(no rebuild). :func:`approximate_top_k` then rescores the candidates exactly from the
replica and applies boosts, exclusions, unavailable items and the diversity cap, with the
contract of :meth:`ItemReplica.top_k <online_models.replica.ItemReplica.top_k>`.
:func:`use_approximate` decides by catalogue size (``ModelConfig.ann_min_items``).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> vectors = rng.standard_normal((500, 8)).astype(np.float32)
>>> index = ApproximateItemIndex(dim=8)
>>> index.upsert(np.arange(500), vectors, np.zeros(500, dtype=np.float32))
500
>>> q = vectors[7]
>>> exact = np.argsort(-(vectors @ q))[:5]
>>> found = index.query(q, 5)
>>> len(set(found.tolist()) & set(exact.tolist())) >= 4
True
>>> 7 in index.query(q, 5, exclude={7}).tolist()
False
>>> _ = index.upsert([7], -vectors[7:8], np.zeros(1, dtype=np.float32))   # moved in place
>>> 7 in index.query(q, 5).tolist(), len(index)
(False, 500)
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from online_models.config import ModelConfig
from online_models.ranking import cap_per_category

if TYPE_CHECKING:
    from online_models.replica import ItemReplica

# Defaults from bench/bench_ann.py (docs/benchmarks.md, "Catalogue scale"): with M=16 and
# ef=512 the rescored top-20 keeps Recall@20 0.957 at 1M clustered items for 3.2 ms p99 on
# one core (ef=256: 0.944); float16 storage costs no measurable recall.
CONNECTIVITY = 16
EXPANSION_ADD = 128
EXPANSION_SEARCH = 512
POOL = 64  # candidates rescored exactly per query (>= k)


def use_approximate(n_items: int, config: ModelConfig) -> bool:
    """Whether a catalogue of ``n_items`` should be served from the approximate index.

    ``config.ann_min_items`` <= 0 turns approximate retrieval off.

    >>> cfg = ModelConfig(ann_min_items=200_000)
    >>> use_approximate(199_999, cfg), use_approximate(1_000_000, cfg)
    (False, True)
    >>> use_approximate(10**7, ModelConfig(ann_min_items=0))
    False
    """
    return 0 < config.ann_min_items <= n_items


class ApproximateItemIndex:
    """HNSW index (inner product) of ``[vector, static]`` per replica row.

    Parameters
    ----------
    dim : int
        Item vector dimensions (the index stores ``dim + 1``).
    connectivity : int
        HNSW ``M`` (graph edges per node); fixed for the index's life.
    expansion_add, expansion_search : int
        ``ef`` while inserting / searching (search's can be changed later).
    dtype : str
        Storage of the vectors in the index: ``"f16"`` (default, half the memory of
        ``"f32"`` at the same recall) or ``"f32"``. usearch's ``"i8"`` assumes unit-range
        vectors and loses most of the recall on these scores: not offered.
    threads : int
        Threads for bulk inserts (searches use one).

    Notes
    -----
    Results are deterministic for the same sequence of single-threaded inserts and the
    same queries. Rows are the replica's rows (stable for an item's life).
    """

    def __init__(
        self,
        dim: int,
        *,
        connectivity: int = CONNECTIVITY,
        expansion_add: int = EXPANSION_ADD,
        expansion_search: int = EXPANSION_SEARCH,
        dtype: str = "f16",
        threads: int = 1,
    ) -> None:
        if dtype not in ("f16", "f32"):
            raise ValueError(f"dtype must be f16 or f32; got {dtype!r}")
        from usearch.index import Index  # imported here: only large catalogues need it

        self.dim = dim
        self.threads = threads
        self._index = Index(
            ndim=dim + 1,
            metric="ip",
            dtype=dtype,
            connectivity=connectivity,
            expansion_add=expansion_add,
            expansion_search=expansion_search,
        )
        self._query = np.ones(dim + 1, dtype=np.float32)

    @classmethod
    def from_replica(cls, replica: ItemReplica, **kwargs: Any) -> ApproximateItemIndex:
        """An index of every available row of ``replica`` (a one-off build: ~390 s of CPU
        at 1M items, so build it once, with ``threads=2`` where a core is free)."""
        index = cls(replica.config.dim, **kwargs)
        refresh_rows(index, replica, np.arange(len(replica)))
        return index

    def __len__(self) -> int:
        return int(self._index.size)

    def __contains__(self, row: object) -> bool:
        return isinstance(row, int | np.integer) and bool(self._index.contains(int(row)))

    @property
    def expansion_search(self) -> int:
        """Search ``ef``: higher is slower and recalls more."""
        return int(self._index.expansion_search)

    @expansion_search.setter
    def expansion_search(self, ef: int) -> None:
        self._index.expansion_search = ef

    def memory_bytes(self) -> int:
        """Memory of the index (graph and stored vectors)."""
        return int(self._index.memory_usage)

    def upsert(
        self,
        rows: Iterable[int] | np.ndarray,
        vectors: np.ndarray,
        static: np.ndarray | None = None,
        min_change: float = 0.0,
    ) -> int:
        """Insert rows or replace their vectors in place (no rebuild); returns rows written.

        Parameters
        ----------
        rows : array of int
            Replica rows (distinct).
        vectors : numpy.ndarray
            ``len(rows) x dim`` item vectors.
        static : numpy.ndarray, optional
            Per-row static score (bias + popularity); zeros if omitted.
        min_change : float
            Rows already indexed whose ``[vector, static]`` moved by less than this share
            of its norm are left as they are: a graph update costs ~0.1-0.3 ms per row,
            and candidates are rescored exactly anyway.
        """
        keys = np.asarray(rows if isinstance(rows, np.ndarray) else list(rows), dtype=np.uint64)
        if keys.size == 0:
            return 0
        data = np.empty((keys.size, self.dim + 1), dtype=np.float32)
        data[:, : self.dim] = vectors
        data[:, self.dim] = 0.0 if static is None else static
        present = np.asarray(self._index.contains(keys), dtype=bool).reshape(-1)
        if min_change > 0 and present.any():
            old = np.stack(self._index.get(keys[present], dtype=np.float32))
            new = data[present]
            moved = np.linalg.norm(new - old, axis=1) > min_change * np.linalg.norm(new, axis=1)
            keep = np.ones(keys.size, dtype=bool)
            keep[np.flatnonzero(present)[~moved]] = False
            keys, data, present = keys[keep], data[keep], present[keep]
            if keys.size == 0:
                return 0
        if present.any():
            # usearch refuses duplicate keys: remove, then add (the freed slots are reused).
            self._index.remove(keys[present])
        self._index.add(keys, data, threads=self.threads)
        return int(keys.size)

    def remove(self, rows: Iterable[int] | np.ndarray) -> None:
        """Drop rows (e.g. items that became unavailable); unknown rows are ignored."""
        keys = np.asarray(rows if isinstance(rows, np.ndarray) else list(rows), dtype=np.uint64)
        if keys.size:
            self._index.remove(keys)

    def query(self, query: np.ndarray, k: int, exclude: Collection[int] = ()) -> np.ndarray:
        """Up to ``k`` rows with the highest approximate ``query . v + static``, best first,
        none of them in ``exclude``."""
        n = len(self)
        if n == 0 or k <= 0:
            return np.zeros(0, dtype=np.int64)
        self._query[: self.dim] = query
        want = min(n, k + len(exclude))  # over-fetch so exclusions cannot shorten the list
        keys = self._index.search(self._query, want, threads=1).keys.astype(np.int64)
        if exclude:
            keys = keys[[int(r) not in exclude for r in keys.tolist()]]
        return keys[:k]


def refresh_rows(
    index: ApproximateItemIndex,
    replica: ItemReplica,
    rows: Iterable[int] | np.ndarray,
    min_change: float = 0.0,
) -> int:
    """Bring ``rows`` of ``index`` up to date with ``replica`` (vectors, static term,
    availability); returns rows written. Call with the rows changed since the last call."""
    rows = np.unique(
        np.asarray(rows if isinstance(rows, np.ndarray) else list(rows), dtype=np.int64)
    )
    if rows.size == 0:
        return 0
    blocked = replica.blocked[rows]
    if blocked.any():
        index.remove(rows[blocked])
    live = rows[~blocked]
    return index.upsert(live, replica.table._data[live], replica.static[live], min_change)


def approximate_top_k(
    replica: ItemReplica,
    index: ApproximateItemIndex,
    query: np.ndarray,
    k: int,
    exclude_rows: Iterable[int] = (),
    boost_rows: np.ndarray | None = None,
    boost: np.ndarray | None = None,
    diversity_cap: int = 0,
    pool: int = POOL,
) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`ItemReplica.top_k` from index candidates instead of a full scan.

    The index proposes ``max(pool, k)`` rows (``4 k + 32`` with a diversity cap); boosted
    rows join them (a recency boost can lift an item the plain score would not retrieve);
    every candidate is rescored exactly from the replica's float32 vectors and static term,
    so the scores equal the exact path's and only a missed candidate differs.
    """
    excluded = {int(r) for r in exclude_rows}
    want = max(pool, k) if diversity_cap <= 0 else max(pool, 4 * k + 32)
    cand = index.query(query, want, excluded)
    n = len(replica)
    b_rows = b_vals = None
    if boost_rows is not None and boost is not None and len(boost_rows) > 0:
        b_rows = np.asarray(boost_rows, dtype=np.int64)
        b_vals = np.asarray(boost, dtype=np.float32)
        ok = (b_rows >= 0) & (b_rows < n)
        b_rows, b_vals = b_rows[ok], b_vals[ok]
        cand = np.concatenate((cand, b_rows))
    cand = np.unique(cand[(cand >= 0) & (cand < n)])
    if cand.size == 0:
        return cand, np.zeros(0, dtype=np.float32)
    s = replica.table._data[cand] @ np.asarray(query, dtype=np.float32)
    s += replica.static[cand]
    if b_rows is not None and b_vals is not None:
        # cand is sorted and holds every boost row: map rows to positions, sum repeats.
        np.add.at(s, np.searchsorted(cand, b_rows), b_vals)
    drop = replica.blocked[cand]
    if excluded:
        drop |= np.isin(cand, np.fromiter(excluded, dtype=np.int64, count=len(excluded)))
    s[drop] = -np.inf
    order = np.argsort(-s, kind="stable")
    order = order[np.isfinite(s[order])]
    rows = cand[order]
    if diversity_cap > 0:
        rows = cap_per_category(replica, rows, k, diversity_cap)
        keep = np.searchsorted(cand, rows)
        return rows, s[keep]
    return rows[:k], s[order[:k]]


# Rows indexed per call while an index is first built: the exact scan serves meanwhile, and
# no single call stalls the caller for long (~0.2-0.5 ms per row at 1M items).
BUILD_ROWS_PER_CALL = 1000


class ReplicaIndex:
    """An :class:`ApproximateItemIndex` of one replica and how far its build has got."""

    def __init__(self, config: ModelConfig) -> None:
        self.index = ApproximateItemIndex(config.dim, dtype=config.ann_dtype)
        self.built = 0  # rows [0, built) are in the index


def synced_index(replica: ItemReplica, config: ModelConfig) -> ApproximateItemIndex | None:
    """The replica's approximate index, up to date, or None while an exact scan should serve.

    Below ``config.ann_min_items`` items: None. Above, the index is built on the replica
    (``replica.ann``) :data:`BUILD_ROWS_PER_CALL` rows per call, serving exact until it
    covers every row; afterwards each call first applies the rows changed since the last
    one (vectors, static scores, availability) in place: no rebuild.
    """
    if not use_approximate(len(replica), config):
        return None
    state: ReplicaIndex | None = replica.ann
    if state is None:
        state = replica.ann = ReplicaIndex(config)
        replica.track_changes()
    changed = replica.take_changed()
    refresh_rows(state.index, replica, changed[changed < state.built])
    if state.built < len(replica):
        upto = min(len(replica), state.built + BUILD_ROWS_PER_CALL)
        refresh_rows(state.index, replica, np.arange(state.built, upto))
        state.built = upto
        if upto < len(replica):
            return None
    return state.index
