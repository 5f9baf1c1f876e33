"""Growable float32 embedding tables with row-wise Adagrad state, and content vectors.

An :class:`EmbeddingTable` maps string ids to rows of a float32 matrix. Each row has one
Adagrad accumulator (row-wise Adagrad, as in large-scale embedding trainers), so the
optimiser state costs one float per row instead of one per weight. Rows encode to bytes
(vector then accumulator) for Flink state.

>>> t = EmbeddingTable(dim=4, seed=0)
>>> r = t.row("item-1")
>>> t.row("item-1") == r, len(t), t.ids[r]
(True, 1, 'item-1')
>>> blob = t.encode_row(r)
>>> vec, acc = EmbeddingTable.decode_row(blob)
>>> bool((vec == t.vectors[r]).all()), acc == float(t.accumulators[r])
(True, True)
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Iterable
from functools import lru_cache

import numpy as np

_BANK_ROWS = 8192
GROWTH = 1.25


@lru_cache(maxsize=16)
def _bank(dim: int, seed: int) -> np.ndarray:
    """A fixed random bank of unit-norm rows; hashed tokens index into it."""
    rng = np.random.default_rng([seed, dim, 7919])
    bank = rng.standard_normal((_BANK_ROWS, dim)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    return bank


@lru_cache(maxsize=65_536)
def token_vector(token: str, dim: int, seed: int) -> np.ndarray:
    """Cached :func:`hashed_vector` for repeated tokens (categories, brands, prices).

    >>> bool((token_vector("cat:a", 4, 0) == hashed_vector("cat:a", 4, 0)).all())
    True
    """
    return hashed_vector(token, dim, seed)


def hashed_vector(token: str, dim: int, seed: int) -> np.ndarray:
    """A deterministic pseudo-random unit-ish vector for a string token.

    Uses blake2b (stable across processes, unlike ``hash``) to pick two signed rows of a
    seeded random bank and sums them.

    >>> a = token_vector("cat:shoes", 8, 0)
    >>> bool((a == token_vector("cat:shoes", 8, 0)).all()), a.dtype.name
    (True, 'float32')
    >>> float(np.dot(a, token_vector("cat:hats", 8, 0))) != float(np.dot(a, a))
    True
    """
    h = hashlib.blake2b(token.encode("utf-8"), digest_size=8, person=b"freshrec").digest()
    x = int.from_bytes(h, "little")
    bank = _bank(dim, seed)
    i1, i2 = x % _BANK_ROWS, (x >> 16) % _BANK_ROWS
    s1 = 1.0 if (x >> 40) & 1 else -1.0
    s2 = 1.0 if (x >> 41) & 1 else -1.0
    v = (s1 * bank[i1] + s2 * bank[i2]) * np.float32(1.0 / math.sqrt(2.0))
    v.setflags(write=False)
    return v


def price_bucket(price: float | None) -> int | None:
    """Log2 price bucket (``None`` when unknown).

    >>> price_bucket(None), price_bucket(0.0), price_bucket(35.79), price_bucket(1000)
    (None, 0, 5, 9)
    """
    if price is None or price < 0 or not math.isfinite(price):
        return None
    return int(math.log2(1.0 + price))


def content_vector(
    item_id: str,
    dim: int,
    seed: int,
    category: str | None = None,
    brand: str | None = None,
    price: float | None = None,
    scale: float = 0.3,
) -> np.ndarray:
    """Initial vector of an item from its metadata (deterministic, hashed).

    Items of the same category (and brand, price bucket) start close together, so a
    new item scores well for users whose recent items share its category before it has
    any interaction. An id-specific part keeps items distinguishable.

    >>> a = content_vector("i1", 16, 0, category="shoes", brand="acme", price=20.0)
    >>> b = content_vector("i2", 16, 0, category="shoes", brand="acme", price=25.0)
    >>> c = content_vector("i3", 16, 0, category="books")
    >>> bool(np.dot(a, b) > np.dot(a, c)), a.dtype.name, round(float(np.linalg.norm(a)), 1)
    (True, 'float32', 0.3)
    """
    v = 0.45 * hashed_vector("id:" + item_id, dim, seed)
    if category is not None:
        v = v + 0.8 * token_vector("cat:" + category, dim, seed)
        bucket = price_bucket(price)
        if bucket is not None:
            v = v + 0.25 * token_vector(f"price:{category}:{bucket}", dim, seed)
    if brand is not None:
        v = v + 0.35 * token_vector("brand:" + brand, dim, seed)
    norm = math.sqrt(float(v @ v))
    return (v * np.float32(scale / norm if norm > 0 else 0.0)).astype(np.float32, copy=False)


class EmbeddingTable:
    """A growable float32 matrix with an id -> row map and row-wise Adagrad accumulators.

    Parameters
    ----------
    dim : int
        Columns of the matrix.
    capacity : int
        Initial rows allocated; the table grows by 25% when full (bounded over-allocation).
    seed : int
        Seed of the default random initialisation of new rows.
    init_scale : float
        Norm of a new row when no vector is given.

    Attributes
    ----------
    ids : list[str]
        Row -> id.
    index : dict[str, int]
        Id -> row.
    """

    __slots__ = ("_acc", "_data", "dim", "ids", "index", "init_scale", "seed")

    def __init__(self, dim: int, capacity: int = 1024, seed: int = 0,
                 init_scale: float = 0.1) -> None:
        self.dim = dim
        self.seed = seed
        self.init_scale = init_scale
        self._data = np.zeros((max(capacity, 1), dim), dtype=np.float32)
        self._acc = np.zeros(max(capacity, 1), dtype=np.float32)
        self.ids: list[str] = []
        self.index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.index

    @property
    def vectors(self) -> np.ndarray:
        """A view of the used rows (``len(self) x dim``); writes go to the table."""
        return self._data[: len(self.ids)]

    @property
    def accumulators(self) -> np.ndarray:
        """A view of the row-wise Adagrad accumulators of the used rows."""
        return self._acc[: len(self.ids)]

    @property
    def capacity(self) -> int:
        """Rows allocated."""
        return self._data.shape[0]

    def reserve(self, rows: int) -> None:
        """Make room for at least ``rows`` rows."""
        if rows <= self.capacity:
            return
        data = np.zeros((rows, self.dim), dtype=np.float32)
        data[: len(self.ids)] = self._data[: len(self.ids)]
        acc = np.zeros(rows, dtype=np.float32)
        acc[: len(self.ids)] = self._acc[: len(self.ids)]
        self._data, self._acc = data, acc

    def add(self, item_id: str, vector: np.ndarray | None = None, accumulator: float = 0.0) -> int:
        """Add (or overwrite) a row and return its index."""
        row = self.index.get(item_id)
        if row is None:
            row = len(self.ids)
            if row >= self.capacity:
                self.reserve(max(row + 1, int(self.capacity * GROWTH) + 16))
            self.ids.append(item_id)
            self.index[item_id] = row
        if vector is None:
            vector = hashed_vector("id:" + item_id, self.dim, self.seed) * self.init_scale
        self._data[row] = vector
        self._acc[row] = accumulator
        return row

    def row(self, item_id: str, create: bool = True) -> int:
        """Row of ``item_id``; an unseen id gets a new row (or ``-1`` if not ``create``)."""
        row = self.index.get(item_id)
        if row is None:
            return self.add(item_id) if create else -1
        return row

    def rows(self, item_ids: Iterable[str]) -> np.ndarray:
        """Rows of several ids (creating unseen ones)."""
        return np.fromiter((self.row(i) for i in item_ids), dtype=np.int64)

    def encode_row(self, row: int) -> bytes:
        """Bytes of one row: ``dim`` float32 then the float32 accumulator."""
        return self._data[row].tobytes() + self._acc[row].tobytes()

    @staticmethod
    def decode_row(blob: bytes) -> tuple[np.ndarray, float]:
        """Inverse of :meth:`encode_row`: ``(vector, accumulator)``; the vector is read-only."""
        arr = np.frombuffer(blob, dtype=np.float32)
        return arr[:-1], float(arr[-1])

    def nbytes(self) -> dict[str, int]:
        """Approximate memory held: arrays (allocated) and the id maps."""
        arrays = self._data.nbytes + self._acc.nbytes
        ids = sys.getsizeof(self.ids) + sys.getsizeof(self.index)
        ids += sum(sys.getsizeof(s) for s in self.ids)
        ids += sum(sys.getsizeof(r) for r in range(256, len(self.ids)))  # boxed ints > 256
        return {"arrays": arrays, "ids": ids, "total": arrays + ids}
