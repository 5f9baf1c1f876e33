"""The state benchmark's derived figures, table, goal verdicts and plot
(:mod:`bench.bench_state`)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from bench.state_fill import GOAL_FACTOR

BACKENDS = ("hashmap", "rocksdb", "rocksdb-incremental")


def derive(results: list[dict[str, Any]], raw: dict[str, Any]) -> None:
    """Per-user heap bytes: hashmap heap minus RocksDB heap at the same size (the RocksDB
    job keeps its state off heap), and the slope between sizes."""
    by = {(r["backend"], r["users"]): r for r in results if "error" not in r}
    for (backend, n), r in by.items():
        if backend != "hashmap" or not r.get("heap_after_gc_mib"):
            continue
        base = by.get(("rocksdb", n)) or by.get(("rocksdb-incremental", n))
        if base and base.get("heap_after_gc_mib"):
            r["heap_state_mib"] = round(r["heap_after_gc_mib"] - base["heap_after_gc_mib"], 1)
            # Includes the items (the same M in every run): charge them at their checkpoint
            # size ratio so that the users' share is not flattered.
            share = (r["bytes_per_user_checkpoint"] * n) / max(
                r["bytes_per_user_checkpoint"] * n + r["bytes_per_item_checkpoint"]
                * r["items"], 1)
            r["bytes_per_user_heap"] = round(r["heap_state_mib"] * 2**20 * share / n, 1)
    hm = sorted((n, r) for (b, n), r in by.items() if b == "hashmap" and r.get("heap_after_gc_mib"))
    for (n1, r1), (n2, r2) in itertools.pairwise(hm):
        r2["bytes_per_user_heap_slope"] = round(
            (r2["heap_after_gc_mib"] - r1["heap_after_gc_mib"]) * 2**20 / (n2 - n1), 1)
    for r in by.values():
        for key in ("bytes_per_user_checkpoint", "bytes_per_user_heap",
                    "bytes_per_user_heap_slope", "bytes_per_user_rocksdb_local"):
            if r.get(key):
                r[key.replace("bytes_per_user", "x_vector")] = round(
                    r[key] / raw["vector_bytes"], 2)
                r[key.replace("bytes_per_user", "x_vector_history")] = round(
                    r[key] / (raw["vector_bytes"] + raw["bounded_history_bytes"]), 2)


def table(results: list[dict[str, Any]]) -> str:
    rows = ["| backend | users | items | fill s (users/s) | checkpoint full / written MB | "
            "duration s | B/user ckpt | B/item ckpt | B/user heap | x vector / x (vector + "
            "history) | JVM RSS MiB (peak) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['backend']} | {r['users']:,} | {r['items']:,} | failed: "
                        f"{r['error'].splitlines()[0][:70]} |||||||")
            continue
        c = r["checkpoint"]
        heap = r.get("bytes_per_user_heap")
        rows.append(
            f"| {r['backend']} | {r['users']:,} | {r['items']:,} | {r['fill_s']:,.0f} "
            f"({r['users_per_s']:,.0f}) | {c['state_size'] / 1e6:,.1f} / "
            f"{c['checkpointed_size'] / 1e6:,.1f} | {c['duration_ms'] / 1000:.1f} | "
            f"{r['bytes_per_user_checkpoint']:,.0f} | {r['bytes_per_item_checkpoint']:,.0f} | "
            f"{'-' if heap is None else f'{heap:,.0f}'} | {r['x_vector_checkpoint']:.1f} / "
            f"{r['x_vector_history_checkpoint']:.2f} | "
            f"{r['rss_after_checkpoint_mib']:,.0f} ({r['rss_peak_mib']:,.0f}) |")
    return "\n".join(rows)


def verdicts(results: list[dict[str, Any]], raw: dict[str, Any]) -> list[str]:
    goal_u, goal_i = raw["goal_user_bytes"], raw["goal_item_bytes"]
    out = [f"goal per user: <= {GOAL_FACTOR} x (raw float32 vector {raw['vector_bytes']} B + "
           f"bounded history {raw['bounded_history_bytes']:.0f} B) = {goal_u:.0f} B; "
           f"bounded history = {raw['history_entries']:.0f} entries (model.history_len) as "
           "UserState stores them: UTF-8 item id + NUL separator + "
           f"{raw['history_columns'] / max(raw['history_entries'], 1):.0f} B of time, weight "
           "and type code",
           f"goal per item: <= {GOAL_FACTOR} x raw float32 vector = {goal_i:.0f} B"]
    for r in results:
        if "error" in r:
            continue
        head = f"{r['backend']} {r['users']:,} users:"
        parts = []
        for key, label in (("bytes_per_user_checkpoint", "checkpoint"),
                           ("bytes_per_user_heap", "heap"),
                           ("bytes_per_user_heap_slope", "heap slope"),
                           ("bytes_per_user_rocksdb_local", "RocksDB local")):
            v = r.get(key)
            if v:
                parts.append(f"{label} {v:,.0f} B/user = {v / goal_u * GOAL_FACTOR:.2f}x "
                             f"({'met' if v <= goal_u else 'NOT met'})")
        vi = r["bytes_per_item_checkpoint"]
        parts.append(f"checkpoint {vi:,.0f} B/item = {vi / raw['vector_bytes']:.2f}x vector "
                     f"({'met' if vi <= goal_i else 'NOT met'})")
        out.append(head + " " + "; ".join(parts))
    return out


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in doc["results"] if "error" not in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    style = {"hashmap": ("tab:blue", "o"), "rocksdb": ("tab:orange", "s"),
             "rocksdb-incremental": ("tab:green", "^")}
    for backend in BACKENDS:
        rs = sorted((r for r in results if r["backend"] == backend), key=lambda r: r["users"])
        if not rs:
            continue
        color, marker = style[backend]
        xs = [r["users"] for r in rs]
        ax1.plot(xs, [r["checkpoint"]["state_size"] / 1e6 for r in rs], marker=marker,
                 color=color, label=f"{backend} (full size)")
        if backend == "rocksdb-incremental":
            ax1.plot(xs, [r["checkpoint"]["checkpointed_size"] / 1e6 for r in rs],
                     marker=marker, color=color, linestyle="--",
                     label=f"{backend} (written by this checkpoint)")
        ax2.plot(xs, [r["checkpoint"]["duration_ms"] / 1000 for r in rs], marker=marker,
                 color=color, label=backend)
    items = results[0]["items"] if results else 0
    for ax, ylabel in ((ax1, "checkpoint size (MB)"), (ax2, "checkpoint duration (s)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"users in state (+ {items:,} items)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    raw = doc["raw"]
    fig.suptitle(f"freshrec keyed state, first checkpoint after the fill (dim {doc['dim']}, "
                 f"{raw['history_entries']:.0f} history, {doc['dedup_ids']} dedup ids; "
                 f"p=1, thread mode)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
