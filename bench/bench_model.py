"""Speed figures of the model core, with River measured in the same run.

Run: ``nice .venv/bin/python bench/bench_model.py [--quick]`` (one torch thread unless
``--threads``). Prints figures and ratios; these are goals, not timed tests.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>12,.0f} ev/s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller runs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dim", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from river import optim, reco

    from freshrec.generator import generate_events
    from online_models import EmbeddingTable, FreshRecModel, ItemReplica, ModelConfig, UserState

    n_ev = 20_000 if args.quick else 60_000
    events = list(generate_events(n_ev, seed=1, n_users=5000, n_items=20000))
    inter = [e for e in events if e.user_id is not None]
    cfg = ModelConfig(dim=args.dim, exploration=0.0)
    print(f"dim={args.dim} torch_threads={args.threads} events={len(events):,}")

    river = reco.FunkMF(n_factors=args.dim, optimizer=optim.SGD(0.05), seed=1)
    t = time.perf_counter()
    for e in inter:
        river.learn_one(e.user_id, e.item_id, 1.0)
    river_s = time.perf_counter() - t
    print(f"River FunkMF learn_one    {_rate(len(inter), river_s)}")

    m = FreshRecModel(cfg)
    t = time.perf_counter()
    for e in events:
        m.learn_one(e)
    one_s = time.perf_counter() - t
    print(f"freshrec learn_one        {_rate(len(events), one_s)}   "
          f"ratio vs River {(len(events) / one_s) / (len(inter) / river_s):.2f}x (goal >= 1x)")

    for bs in (256, 1024):
        m = FreshRecModel(cfg)
        t = time.perf_counter()
        for i in range(0, len(events), bs):
            m.learn_many(events[i:i + bs])
        many_s = time.perf_counter() - t
        print(f"freshrec learn_many({bs:>4}) {_rate(len(events), many_s)}   ratio vs River "
              f"{(len(events) / many_s) / (len(inter) / river_s):.2f}x (goal >= 3x)")

    # scoring over 100k items
    n_items = 100_000
    rep = ItemReplica(cfg, capacity=n_items)
    rng = np.random.default_rng(0)
    vecs = (rng.standard_normal((n_items, args.dim)) * 0.1).astype(np.float32)
    for i in range(n_items):
        rep.upsert(f"i{i}", vecs[i], meta={"category": f"c{i % 50}"}, ts_ms=0)
    m = FreshRecModel(cfg)
    m.replica = rep
    users = []
    for u in range(1000):
        st = UserState.new(f"u{u}", args.dim, 0)
        hist = tuple((f"i{int(j)}", 1000 * k, 1.0, "view")
                     for k, j in enumerate(rng.integers(0, n_items, 8)))
        users.append(st.replace(history=hist, n_events=8, last_ts=8000))
        m.users[f"u{u}"] = users[-1]
    lat = []
    for u in range(300 if args.quick else 1000):
        t = time.perf_counter()
        m.recommend(f"u{u}", k=20)
        lat.append((time.perf_counter() - t) * 1000)
    print(f"recommend top-20 / 100k items  p50 {np.percentile(lat, 50):.2f} ms  "
          f"p99 {np.percentile(lat, 99):.2f} ms (goal p99 <= 5 ms)")
    ids = [f"u{u}" for u in range(1000)]
    m.recommend_many(ids[:50], k=20, reasons=False)
    best = []
    for _ in range(3):
        t = time.perf_counter()
        m.recommend_many(ids, k=20, reasons=False)
        best.append((time.perf_counter() - t) * 1000)
    q = torch.from_numpy(vecs[:1000].copy())
    t = time.perf_counter()
    _ = torch.topk(q @ torch.from_numpy(vecs).T, 20, dim=1)
    mm = (time.perf_counter() - t) * 1000
    print(f"recommend_many 1,000 users x 100k items  {min(best):.0f} ms "
          f"(bare mm+topk {mm:.0f} ms; goal <= 150 ms)")

    # state encoding
    tab = EmbeddingTable(args.dim)
    tab.add("x")
    n = 100_000
    t = time.perf_counter()
    for _ in range(n):
        EmbeddingTable.decode_row(tab.encode_row(0))
    print(f"EmbeddingTable row encode+decode  {(time.perf_counter() - t) / n * 1e6:.2f} us "
          f"(goal <= 2 us)")
    u = users[0].replace(purchased=frozenset({"i1", "i2"}), seen=frozenset({"i1", "i2", "i3"}))
    t = time.perf_counter()
    for _ in range(20_000):
        UserState.from_bytes(u.to_bytes())
    print(f"UserState to_bytes+from_bytes (8-item history)  "
          f"{(time.perf_counter() - t) / 20_000 * 1e6:.1f} us, {len(u.to_bytes())} bytes")

    rows = 1_000_000
    big = EmbeddingTable(args.dim, capacity=1024)
    for i in range(rows):
        big.add(str(i))
    nb = big.nbytes()
    raw = rows * args.dim * 4
    print(f"EmbeddingTable 1M rows: arrays {nb['arrays'] / raw:.2f}x raw float32, "
          f"with id maps {nb['total'] / raw:.2f}x (goal <= 1.5x)")


if __name__ == "__main__":
    main()
