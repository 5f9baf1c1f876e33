"""The tables and plot of :mod:`bench.bench_ann`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.ann_data import K, log


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
