"""Catalogue scale: exact vs approximate top-K retrieval.

Run: ``nice -n 10 .venv/bin/python -m bench.bench_ann [--sizes 10000,100000,1000000]
[--dim 32] [--queries 500] [--out bench/results/ann.json] [--plot docs/img/ann_latency.png]``
or redraw the plot from a saved run:
``python -m bench.bench_ann --plot-only bench/results/ann.json``.

For each catalogue size it builds a clustered catalogue (a Gaussian mixture of categories
with log-normal norms, a static term ``bias + pop_weight * log popularity`` as the replica
keeps it, and a share of idle items at the replica's ``-inf`` trend floor) and user queries
built like :func:`online_models.scoring.query_vector` (long-term vector plus recency-weighted
context items from one to three categories). The score is ``q . v + static``; the indexes
hold ``[v, static]`` and are queried with ``[q, 1]`` (inner product), so one search covers
both terms. Every approximate search fetches ``--pool`` candidates that are rescored exactly
in float32 (what :func:`online_models.ann.approximate_top_k` does), and Recall@20 compares
the rescored top-20 with the exact float32 top-20 of the same run.

Measured per size, one query at a time on one thread (wall clock; p50/p99 over
``--queries``): exact numpy (matmul + argpartition), exact torch (the replica's ``mv`` +
``topk``), the batched torch path of ``recommend_for_users`` (per user, chunks of 64),
exact float16 / int8 scoring (blocked dequantisation) with their memory; and for each
installed ANN library (usearch, hnswlib, faiss-cpu; HNSW, same M and ef_construction) the
build time, memory (RSS growth), latency and recall at each ``--ef``, the time to update
1% of the vectors in place, and recall after that update. Progress goes to stderr; tables
and ratios to stdout; everything to ``--out`` as JSON. Figures, not timed tests.
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread for every library: the job scores on one core per operator.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

from bench import common  # noqa: E402

K = 20
POP_WEIGHT = 0.3  # ModelConfig.pop_weight
IDLE_STATIC = POP_WEIGHT * -50.0  # the replica's static term for an item with no trend yet
CONTEXT_DECAY = 0.6  # ModelConfig.context_decay
USER_WEIGHT = 0.5  # ModelConfig.user_weight
BATCH = 64  # online_models.scoring._SCORE_CHUNK
BLOCK = 16_384  # rows per dequantisation block: stays in L2 cache


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rss_bytes() -> int:
    """Resident set size of this process."""
    return psutil.Process().memory_info().rss


def percentiles(cpu_s: list[float], wall_s: list[float]) -> dict[str, float]:
    """p50/p99 of CPU time per query (the figures), and of wall time (JSON only)."""
    c, w = np.asarray(cpu_s) * 1e3, np.asarray(wall_s) * 1e3
    return {
        "p50_ms": float(np.percentile(c, 50)),
        "p99_ms": float(np.percentile(c, 99)),
        "wall_p50_ms": float(np.percentile(w, 50)),
        "wall_p99_ms": float(np.percentile(w, 99)),
    }


class Stopwatch:
    """CPU time of the whole process (every thread a library may use) and wall time.

    CPU time is what the figures report: on a shared 2-core machine a query's wall time
    also counts the time the scheduler gave to other processes.
    """

    def __enter__(self) -> Stopwatch:
        self.cpu, self.wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu = time.process_time() - self.cpu
        self.wall = time.perf_counter() - self.wall


# -- data --------------------------------------------------------------------------------
@dataclass
class Catalogue:
    vectors: np.ndarray  # n x dim float32
    static: np.ndarray  # n float32: bias + pop_weight * log trend (replica.static)
    category: np.ndarray  # n int
    centres: np.ndarray  # n_categories x dim

    @property
    def augmented(self) -> np.ndarray:
        """``[v, static]``: the query ``[q, 1]`` scores ``q . v + static`` by inner product."""
        return np.hstack([self.vectors, self.static[:, None]]).astype(np.float32)


def make_catalogue(n: int, dim: int, seed: int, idle_share: float = 0.2) -> Catalogue:
    """Clustered item vectors: category centre + within-category spread, log-normal norms.

    The static term mixes a small learned bias with ``pop_weight * log(count)`` (Zipf counts
    up to ~1,000 events per item); ``idle_share`` of the items have no events yet and sit at
    the replica's floor, as a long-tail catalogue does.
    """
    rng = np.random.default_rng(seed)
    n_cat = max(20, int(np.sqrt(n)))
    centres = (rng.standard_normal((n_cat, dim)) * (1.5 / np.sqrt(dim))).astype(np.float32)
    # Category sizes are skewed too (a few big categories, many small ones).
    cat_p = 1.0 / np.arange(1, n_cat + 1) ** 0.7
    category = rng.choice(n_cat, size=n, p=cat_p / cat_p.sum())
    vectors = centres[category] + (rng.standard_normal((n, dim)) * (0.6 / np.sqrt(dim))).astype(
        np.float32
    )
    vectors *= rng.lognormal(0.0, 0.25, (n, 1)).astype(np.float32)
    rank = rng.permutation(n) + 1
    log_count = np.log(1000.0) * (1.0 - np.log(rank) / np.log(n))  # 0 .. ln 1000
    static = rng.normal(0.0, 0.2, n) + POP_WEIGHT * log_count
    idle = rng.random(n) < idle_share
    static[idle] = IDLE_STATIC + rng.normal(0.0, 0.2, int(idle.sum()))
    return Catalogue(vectors.astype(np.float32), static.astype(np.float32), category, centres)


def make_queries(cat: Catalogue, n_q: int, seed: int, context_len: int = 5) -> np.ndarray:
    """User queries like ``query_vector``: ``user_weight * p_u + sum_j c_j v_{h_j}``."""
    rng = np.random.default_rng(seed + 1)
    dim = cat.vectors.shape[1]
    w = CONTEXT_DECAY ** np.arange(context_len - 1, -1, -1)
    w = (w / w.sum()).astype(np.float32)
    by_cat: dict[int, np.ndarray] = {}
    out = np.empty((n_q, dim), dtype=np.float32)
    n_cat = cat.centres.shape[0]
    for i in range(n_q):
        interests = rng.choice(n_cat, size=int(rng.integers(1, 4)), replace=False)
        hist = []
        for _ in range(context_len):
            c = int(rng.choice(interests))
            members = by_cat.get(c)
            if members is None:
                members = by_cat[c] = np.flatnonzero(cat.category == c)
            hist.append(int(rng.choice(members)) if members.size else 0)
        p_u = cat.centres[interests[0]] + rng.standard_normal(dim) * (0.6 / np.sqrt(dim))
        out[i] = USER_WEIGHT * p_u + w @ cat.vectors[hist]
    return out


def exact_top(
    vectors: np.ndarray, static: np.ndarray, queries: np.ndarray, k: int = K
) -> np.ndarray:
    """Exact float32 top-``k`` rows per query (ground truth), in chunks of queries."""
    vt, st = torch.from_numpy(vectors).T, torch.from_numpy(static)
    out = []
    for lo in range(0, queries.shape[0], 32):
        s = torch.addmm(st, torch.from_numpy(queries[lo : lo + 32]), vt)
        out.append(torch.topk(s, k, dim=1).indices.numpy())
    return np.concatenate(out)


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(
        np.mean(
            [
                len(set(f[:K].tolist()) & set(t.tolist())) / K
                for f, t in zip(found, truth, strict=True)
            ]
        )
    )


def subset_recall(
    found: list[np.ndarray], truth: np.ndarray, subset: np.ndarray
) -> tuple[float | None, int]:
    """Recall restricted to true top-k entries that are in ``subset`` (the updated rows)."""
    mask = np.zeros(int(max(truth.max(), subset.max())) + 1, dtype=bool)
    mask[subset] = True
    hit = total = 0
    for f, t in zip(found, truth, strict=True):
        want = {int(r) for r in t if r < mask.size and mask[r]}
        total += len(want)
        hit += len(want & set(f[:K].tolist()))
    return (hit / total if total else None), total


# -- exact scorers -----------------------------------------------------------------------
def top_from_scores(s: np.ndarray, k: int = K) -> np.ndarray:
    part = np.argpartition(-s, k)[:k]
    return part[np.argsort(-s[part], kind="stable")]


def timed(fn: Callable[[int], np.ndarray], n_q: int) -> tuple[dict[str, float], list[np.ndarray]]:
    """Latency percentiles of ``fn(i)`` over the queries, and its results."""
    fn(0)  # warm-up (page faults, lazy inits)
    cpu, wall, res = [], [], []
    for i in range(n_q):
        with Stopwatch() as sw:
            r = fn(i)
        cpu.append(sw.cpu)
        wall.append(sw.wall)
        res.append(r)
    return percentiles(cpu, wall), res


def bench_exact(cat: Catalogue, queries: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    n_q = queries.shape[0]
    V, st = cat.vectors, cat.static
    out: dict[str, Any] = {}

    def numpy_f32(i: int) -> np.ndarray:
        s = V @ queries[i]
        s += st
        return top_from_scores(s)

    vt, stt = torch.from_numpy(V), torch.from_numpy(st)

    def torch_f32(i: int) -> np.ndarray:
        s = torch.mv(vt, torch.from_numpy(queries[i]))
        s += stt
        return torch.topk(s, K).indices.numpy()

    # float16 storage: torch converts a block at a time (numpy's f16 -> f32 cast is ~10x
    # slower than torch's here), so the working set stays in cache.
    vh = torch.from_numpy(V.astype(np.float16))
    buf = torch.empty(V.shape[0])

    def torch_f16(i: int) -> np.ndarray:
        q = torch.from_numpy(queries[i])
        for lo in range(0, V.shape[0], BLOCK):
            torch.mv(vh[lo : lo + BLOCK].float(), q, out=buf[lo : lo + BLOCK])
        buf.add_(stt)
        return torch.topk(buf, K).indices.numpy()

    # int8 storage, symmetric per-dimension scale folded into the query (s = V8 @ (q*scale)).
    scale = (np.abs(V).max(axis=0) / 127.0).astype(np.float32)
    v8 = np.round(V / scale).astype(np.int8)
    sbuf = np.empty(V.shape[0], dtype=np.float32)

    def numpy_i8(i: int) -> np.ndarray:
        q = queries[i] * scale
        for lo in range(0, V.shape[0], BLOCK):
            np.dot(v8[lo : lo + BLOCK].astype(np.float32), q, out=sbuf[lo : lo + BLOCK])
        np.add(sbuf, st, out=sbuf)
        return top_from_scores(sbuf)

    f32_bytes = V.nbytes + st.nbytes
    for name, fn, nbytes in (
        ("exact numpy f32", numpy_f32, f32_bytes),
        ("exact torch f32", torch_f32, f32_bytes),
        ("exact torch f16", torch_f16, vh.numel() * 2 + st.nbytes),
        ("exact numpy int8", numpy_i8, v8.nbytes + scale.nbytes + st.nbytes),
    ):
        log(f"  {name} ...")
        lat, res = timed(fn, n_q)
        out[name] = {**lat, "recall": recall(res, truth), "memory_mb": nbytes / 1e6, "build_s": 0.0}

    # recommend_for_users: one addmm + topk per chunk of 64 users; cost per user.
    log("  exact torch f32 batch64 ...")
    cpu, wall = [], []
    batch = min(BATCH, n_q)
    for lo in range(0, n_q - batch + 1, batch):
        with Stopwatch() as sw:
            q = torch.from_numpy(queries[lo : lo + batch])
            torch.topk(torch.addmm(stt, q, vt.T), K, dim=1)
        cpu.append(sw.cpu / batch)
        wall.append(sw.wall / batch)
    out["exact torch f32 batch64 (per user)"] = {
        **percentiles(cpu, wall),
        "recall": 1.0,
        "memory_mb": f32_bytes / 1e6,
        "build_s": 0.0,
    }
    return out


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


def rescored(ann: Ann, aug: np.ndarray, qa: np.ndarray, pool: int) -> np.ndarray:
    """ANN candidates reranked by their exact float32 score (as approximate_top_k does)."""
    cand = ann.search(qa, pool)
    cand = cand[cand >= 0]  # faiss pads with -1
    s = aug[cand] @ qa
    return cand[np.argsort(-s, kind="stable")[:K]]


def bench_ann(
    ann: Ann, cat: Catalogue, queries: np.ndarray, truth: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    aug = cat.augmented
    qa = np.hstack([queries, np.ones((queries.shape[0], 1), np.float32)])
    n_q = queries.shape[0]
    gc.collect()
    before = rss_bytes()
    with Stopwatch() as sw:
        ann.build(aug, args.m, args.ef_construction, args.build_threads)
    gc.collect()
    grown = rss_bytes() - before
    size = ann.index_bytes()
    log(
        f"  {ann.name}: built in {sw.wall:.1f} s wall, {sw.cpu:.1f} s CPU, "
        f"index {size / 1e6:.0f} MB (RSS +{grown / 1e6:.0f} MB)"
    )
    res: dict[str, Any] = {
        "version": ann.version,
        "build_s": sw.cpu,
        "build_wall_s": sw.wall,
        "memory_mb": size / 1e6,
        "rss_growth_mb": grown / 1e6,
        "updates_in_place": ann.updates_in_place,
        "ef": {},
    }
    for ef in args.ef:
        ann.set_ef(ef)
        lat, found = timed(lambda i: rescored(ann, aug, qa[i], args.pool), n_q)
        raw = [ann.search(qa[i], K) for i in range(min(n_q, 200))]
        res["ef"][ef] = {
            **lat,
            "recall": recall(found, truth),
            "recall_raw": recall(raw, truth[: len(raw)]),
        }
        log(
            f"    ef={ef}: p99 {res['ef'][ef]['p99_ms']:.3f} ms "
            f"recall {res['ef'][ef]['recall']:.3f}"
        )

    # 1% of the items move: half to another category (re-learned), all with a new static.
    rng = np.random.default_rng(args.seed + 2)
    n = aug.shape[0]
    rows = np.sort(rng.choice(n, size=max(1, n // 100), replace=False))
    new_cat = rng.integers(0, cat.centres.shape[0], rows.size)
    moved = Catalogue(cat.vectors.copy(), cat.static.copy(), cat.category.copy(), cat.centres)
    half = rows[: rows.size // 2]
    moved.vectors[half] = (
        cat.centres[new_cat[: half.size]] + moved.vectors[half] - cat.centres[cat.category[half]]
    )
    moved.category[half] = new_cat[: half.size]
    moved.static[rows] = cat.static[rows] + rng.normal(0.5, 0.5, rows.size).astype(np.float32)
    aug2 = moved.augmented
    truth2 = exact_top(moved.vectors, moved.static, queries)
    if ann.updates_in_place:
        with Stopwatch() as sw:
            ann.update(rows, aug2[rows], 1)
        res["update_1pct_s"] = sw.cpu
        res["update_1pct_wall_s"] = sw.wall
        res["update_us_per_row"] = res["update_1pct_s"] / rows.size * 1e6
    else:
        res["update_1pct_s"] = None  # only a rebuild (build_s) would apply the change
    res["after_update"] = {}
    for ef in args.ef:
        ann.set_ef(ef)
        found = [rescored(ann, aug2, qa[i], args.pool) for i in range(n_q)]
        sub, n_sub = subset_recall(found, truth2, rows)
        res["after_update"][ef] = {
            "recall": recall(found, truth2),
            "updated_rows_recall": sub,
            "updated_rows_in_truth": n_sub,
        }
    log(
        f"    after 1% update ({'in place' if ann.updates_in_place else 'stale index'}): "
        f"recall {res['after_update'][args.ef[-1]]['recall']:.3f}"
    )
    del ann.ix
    gc.collect()
    return res


# -- report ------------------------------------------------------------------------------
def operating_ef(r: dict[str, Any], target: float) -> int:
    """Smallest measured ef whose recall reaches ``target`` (else the largest)."""
    efs = sorted(r["ef"], key=int)
    for ef in efs:
        if r["ef"][ef]["recall"] >= target:
            return ef
    return efs[-1]


def print_table(n: int, res: dict[str, Any], target: float) -> None:
    ref = res["exact"]["exact numpy f32"]
    print(
        f"\n## {n:,} items, dim {res['dim']} (top-{K}, one query at a time, one thread, CPU time)"
    )
    print(
        "| method | ef | build CPU s | memory MB | p50 ms | p99 ms | Recall@20 | "
        "update 1% s | recall after update | p99 vs exact numpy |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in res["exact"].items():
        print(
            f"| {name} | | | {r['memory_mb']:.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
            f"{r['recall']:.3f} | | | {ref['p99_ms'] / r['p99_ms']:.1f}x |"
        )
    for name, r in res["ann"].items():
        for ef in sorted(r["ef"], key=int):
            e, a = r["ef"][ef], r["after_update"][ef]
            upd = f"{r['update_1pct_s']:.2f}" if r["update_1pct_s"] is not None else "rebuild"
            after = f"{a['recall']:.3f}" + ("" if r["updates_in_place"] else " (stale)")
            star = " *" if ef == operating_ef(r, target) else ""
            print(
                f"| {name} {r['version']}{star} | {ef} | {r['build_s']:.1f} | "
                f"{r['memory_mb']:.0f} | {e['p50_ms']:.3f} | {e['p99_ms']:.3f} | "
                f"{e['recall']:.3f} | {upd} | {after} | "
                f"{ref['p99_ms'] / e['p99_ms']:.1f}x |"
            )
    print(
        f"(* smallest ef with Recall@20 >= {target}; memory: ANN rows = serialised index "
        "(vectors + graph), exact rows = the scored arrays)"
    )


def plot(results: dict[str, Any], out: Path, target: float) -> None:
    """p99 per query vs catalogue size (log-log): exact scorers, and each ANN library at the
    smallest ef reaching ``target`` recall (libraries that never reach it are left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    sizes = sorted(results["sizes"], key=int)
    xs = [int(s) for s in sizes]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for name, style in (
        ("exact numpy f32", "k-o"),
        ("exact torch f32", "k--s"),
        ("exact numpy int8", "k:^"),
        ("exact torch f32 batch64 (per user)", "k-.v"),
    ):
        ys = [results["sizes"][s]["exact"].get(name, {}).get("p99_ms", np.nan) for s in sizes]
        ax.plot(xs, ys, style, label=name, ms=5)
    ann_names = sorted({a for s in sizes for a in results["sizes"][s]["ann"]})
    for name in ann_names:
        ys, efs = [], []
        for s in sizes:
            r = results["sizes"][s]["ann"].get(name)
            ef = operating_ef(r, target) if r is not None else None
            if r is None or r["ef"][ef]["recall"] < target:
                ys.append(np.nan)
                continue
            ys.append(r["ef"][ef]["p99_ms"])
            efs.append(str(ef))
        if efs:
            ax.plot(xs, ys, "-o", ms=5, label=f"{name} (ef {'/'.join(efs)})")
    ax.axhline(5.0, color="red", lw=0.8, ls=":", label="goal at 1M: p99 5 ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("catalogue size (items)")
    ax.set_ylabel("p99 CPU time per user query (ms)")
    ax.set_title(
        f"Top-{K} retrieval, dim {results['args']['dim']}, one thread; "
        f"ANN at Recall@{K} >= {target}"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    log(f"plot written to {out}")


def machine() -> dict[str, Any]:
    return {
        **common.machine(),
        "numpy": np.__version__,
        "torch": torch.__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--ef", default="64,128,256,512", help="search ef values to measure")
    ap.add_argument("--pool", type=int, default=64, help="candidates fetched and rescored")
    ap.add_argument("--m", type=int, default=16, help="HNSW connectivity (M)")
    ap.add_argument("--ef-construction", type=int, default=128)
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--usearch-dtypes", default="f32,f16,i8")
    ap.add_argument("--libs", default="usearch,hnswlib,faiss")
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default="bench/results/ann.json")
    ap.add_argument("--plot", default=None, help="also write the p99 plot (PNG) here")
    ap.add_argument(
        "--plot-only", default=None, help="redraw --plot from these JSON files (comma-separated)"
    )
    args = ap.parse_args()
    if args.plot_only:
        # Several runs (e.g. the 1M size run on its own) merge by catalogue size.
        runs = [json.loads(Path(p).read_text()) for p in args.plot_only.split(",")]
        merged = {**runs[0], "sizes": {k: v for r in runs for k, v in r["sizes"].items()}}
        plot(merged, Path(args.plot or "docs/img/ann_latency.png"), args.target_recall)
        return
    args.ef = [int(x) for x in args.ef.split(",")]
    torch.set_num_threads(1)
    libs = set(args.libs.split(","))
    dtypes = args.usearch_dtypes.split(",")
    results: dict[str, Any] = {"machine": machine(), "args": {**vars(args)}, "sizes": {}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for n in (int(x) for x in args.sizes.split(",")):
        t0 = time.perf_counter()
        log(f"== {n:,} items: data")
        cat = make_catalogue(n, args.dim, args.seed)
        queries = make_queries(cat, args.queries, args.seed)
        truth = exact_top(cat.vectors, cat.static, queries)
        res: dict[str, Any] = {
            "dim": args.dim,
            "exact": bench_exact(cat, queries, truth),
            "ann": {},
        }
        results["sizes"][str(n)] = res
        for ann in available_anns(libs, dtypes):
            log(f"  {ann.name} {ann.version} ...")
            res["ann"][ann.name] = bench_ann(ann, cat, queries, truth, args)
            out.write_text(json.dumps(results, indent=1, default=str))  # a 1M build is long
        res["seconds"] = time.perf_counter() - t0
        print_table(n, res, args.target_recall)
        sys.stdout.flush()
        out.write_text(json.dumps(results, indent=1, default=str))
        del cat
        gc.collect()
    log(f"results written to {args.out}")
    if args.plot:
        plot(results, Path(args.plot), args.target_recall)


if __name__ == "__main__":
    main()
