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
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

from bench import common  # noqa: E402
from bench.ann_data import (  # noqa: E402
    Catalogue,
    K,
    exact_top,
    log,
    make_catalogue,
    make_queries,
    recall,
    subset_recall,
    top_from_scores,
)
from bench.ann_indexes import Ann, available_anns  # noqa: E402
from bench.ann_report import plot, print_table  # noqa: E402

BATCH = 64  # online_models.scoring._SCORE_CHUNK
BLOCK = 16_384  # rows per dequantisation block: stays in L2 cache


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
