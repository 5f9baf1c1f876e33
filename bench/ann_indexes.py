"""The approximate indexes compared by :mod:`bench.bench_ann`, behind one small interface
(HNSW in usearch, hnswlib and faiss-cpu, with the same M and ef_construction); a library
that is not installed is left out."""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Callable, Iterator

import numpy as np

from bench.ann_data import log


# -- ANN libraries -----------------------------------------------------------------------
class Ann:
    """Adapter: build, set ef, search ``pool`` candidates, update rows in place."""

    name = ""
    version = ""
    updates_in_place = True

    def build(self, data: np.ndarray, m: int, ef_construction: int, threads: int) -> None:
        raise NotImplementedError

    def set_ef(self, ef: int) -> None:
        raise NotImplementedError

    def search(self, q: np.ndarray, pool: int) -> np.ndarray:
        raise NotImplementedError

    def update(self, rows: np.ndarray, data: np.ndarray, threads: int) -> None:
        raise NotImplementedError

    def index_bytes(self) -> int:
        """Serialised size of the index (stored vectors + graph): one yardstick for every
        library, unlike RSS growth, which depends on what the allocator kept from before."""
        raise NotImplementedError


class USearch(Ann):
    def __init__(self, dtype: str) -> None:
        from usearch.index import Index

        self._cls = Index
        self.dtype = dtype
        self.name = f"usearch {dtype}"
        self.version = importlib.metadata.version("usearch")

    def build(self, data: np.ndarray, m: int, ef_construction: int, threads: int) -> None:
        self.ix = self._cls(
            ndim=data.shape[1],
            metric="ip",
            dtype=self.dtype,
            connectivity=m,
            expansion_add=ef_construction,
            expansion_search=64,
        )
        self.ix.add(np.arange(data.shape[0], dtype=np.uint64), data, threads=threads)

    def set_ef(self, ef: int) -> None:
        self.ix.expansion_search = ef

    def search(self, q: np.ndarray, pool: int) -> np.ndarray:
        return self.ix.search(q, pool, threads=1).keys.astype(np.int64)

    def update(self, rows: np.ndarray, data: np.ndarray, threads: int) -> None:
        # The high-level wrapper refuses duplicate keys: remove, then add (slots are reused).
        keys = rows.astype(np.uint64)
        self.ix.remove(keys)
        self.ix.add(keys, data, threads=threads)

    def index_bytes(self) -> int:
        return int(self.ix.serialized_length)


class HnswLib(Ann):
    name = "hnswlib f32"

    def __init__(self) -> None:
        import hnswlib

        self._mod = hnswlib
        self.version = importlib.metadata.version("hnswlib")

    def build(self, data: np.ndarray, m: int, ef_construction: int, threads: int) -> None:
        self.ix = self._mod.Index(space="ip", dim=data.shape[1])
        self.ix.init_index(
            max_elements=data.shape[0], M=m, ef_construction=ef_construction, random_seed=1
        )
        self.ix.add_items(data, np.arange(data.shape[0]), num_threads=threads)

    def set_ef(self, ef: int) -> None:
        self.ix.set_ef(ef)

    def search(self, q: np.ndarray, pool: int) -> np.ndarray:
        labels, _ = self.ix.knn_query(q, k=pool, num_threads=1)
        return labels[0].astype(np.int64)

    def update(self, rows: np.ndarray, data: np.ndarray, threads: int) -> None:
        self.ix.add_items(data, rows, num_threads=threads)  # existing labels: updated in place

    def index_bytes(self) -> int:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "index.bin")
            self.ix.save_index(path)
            return os.path.getsize(path)


class Faiss(Ann):
    name = "faiss HNSWFlat f32"
    updates_in_place = False  # IndexHNSW has no remove/update: a change means a rebuild

    def __init__(self) -> None:
        import faiss

        self._mod = faiss
        self.version = importlib.metadata.version("faiss-cpu")

    def build(self, data: np.ndarray, m: int, ef_construction: int, threads: int) -> None:
        f = self._mod
        f.omp_set_num_threads(threads)
        self.ix = f.IndexHNSWFlat(data.shape[1], m, f.METRIC_INNER_PRODUCT)
        self.ix.hnsw.efConstruction = ef_construction
        self.ix.add(data)
        f.omp_set_num_threads(1)

    def set_ef(self, ef: int) -> None:
        self.ix.hnsw.efSearch = ef

    def search(self, q: np.ndarray, pool: int) -> np.ndarray:
        _, labels = self.ix.search(q[None, :], pool)
        return labels[0].astype(np.int64)

    def index_bytes(self) -> int:
        return int(self._mod.serialize_index(self.ix).nbytes)


def available_anns(libs: set[str], usearch_dtypes: list[str]) -> Iterator[Ann]:
    factories: list[tuple[str, Callable[[], Ann]]] = [
        *(("usearch", lambda d=d: USearch(d)) for d in usearch_dtypes),
        ("hnswlib", HnswLib),
        ("faiss", Faiss),
    ]
    for lib, make in factories:
        if lib not in libs:
            continue
        try:
            yield make()
        except ImportError as e:
            log(f"  skipped {lib}: {e}")
