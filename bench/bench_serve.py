"""Serving benchmark: ``freshrec serve`` under HTTP load, its freshness and its start-up.

Starts a broker (single node, temp dir), writes ``--users`` lists of 20 items and
``--items`` item vectors to fresh compacted topics, starts ``freshrec serve`` on an empty
store (the rebuild from the topics is timed), then measures with Debian's ``wrk`` (HTTP/1.1
keep-alive, random users among all of them):

- the most requests per second (``wrk -t2 -c64``), and the latency curve at paced rates
  (``wrk`` with a per-connection delay: 50 connections, rate ~= 50 / (delay + latency));
- freshness: a transactional producer commits a new list for a user; from the moment
  ``commit_transaction()`` returns, a client asks for that user's list until it is served
  (``--samples`` times);
- start-up: a store with ``--stored`` lists (written with the store's own commit, offsets at
  the end of two empty topics), then the time from starting the process to the first list
  served and to ``/healthz`` ready.

The load generator, the service and the broker share the machine (2 cores here), so the
figures are a floor for a machine that runs the service alone.

Usage::

    .venv/bin/python -m bench.bench_serve                     # 100k users, 1M stored lists
    .venv/bin/python -m bench.bench_serve --users 20000 --stored 100000 --seconds 5

Goals: >= 5,000 requests/s with 100k users, p99 <= 10 ms at half that rate;
p99 freshness <= 100 ms; serving within 5 s of start with 1M stored lists. Prints the
figures and writes ``bench/results/serve.json`` and the curve ``docs/img/serve.png``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REPO_ROOT, RESULTS_DIR, cpu_seconds, say
from devstack.kafka_broker import broker_down, broker_up
from devstack.kafka_topics import create_topic
from devstack.processes import free_ports
from freshrec.serve_store import Change, Store, pack_list
from freshrec_common import kafka_config
from freshrec_common.polling import wait_until
from freshrec_common.settings import Settings, load_settings
from schemas.item_embedding import ItemEmbedding
from schemas.recommendation import Recommendation, ScoredItem
from tests.integration.serve_harness import ServeProcess

COMPACT = {"cleanup.policy": "compact"}
PACED_RATES = (1000, 2500, 4000, 5000)
PACED_CONNECTIONS = 50


def a_list(user: str, seq: int, now: int) -> Recommendation:
    # Ids and reasons vary as in the job's lists (they decide the compressed size).
    base = zlib.crc32(user.encode())
    items = tuple(ScoredItem(f"item-{(base + 7 * j) % 50_000}", 1.0 - j / 50 + seq / 1e4,
                             f"similar to item-{(base + 13 * j) % 50_000} you viewed")
                  for j in range(20))
    return Recommendation(user, items, "freshrec-d32", now, now, f"ev-{user}-{seq}", seq)


def fill_topics(settings: Settings, users: int, items: int) -> float:
    producer = kafka_config.producer(settings, acks="all", linger_ms=20,
                                     batch_size=512 * 1024)
    t0 = time.perf_counter()
    now = int(time.time() * 1000)
    topics = settings.topics
    for u in range(users):
        rec = a_list(f"u{u}", 1, now)
        producer.send(topics.recommendations, key=rec.user_id.encode(), value=rec.to_bytes())
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((items, 32)).astype(np.float32)
    for i in range(items):
        emb = ItemEmbedding(f"item-{i}", tuple(vectors[i].tolist()), 0.0, 0.5, 3, now)
        producer.send(topics.item_embeddings, key=emb.item_id.encode(), value=emb.to_bytes())
    producer.flush()
    producer.close()
    return time.perf_counter() - t0


def wrk(url: str, lua: Path, seconds: float, threads: int, connections: int,
        server_pid: int) -> dict[str, float]:
    """Run wrk; requests/s, latency percentiles (ms) and the server's CPU per request (us,
    which the other work on a shared machine does not inflate the way it does latency)."""
    cpu0 = cpu_seconds(server_pid)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:.0f}s", "--latency",
         "-s", str(lua), url], capture_output=True, text=True, check=True).stdout
    unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    figures: dict[str, float] = {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        figures[f"p{pct}_ms"] = float(m.group(1)) * unit[m.group(2)] if m else float("nan")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures["non_2xx"] = float(errors.group(1)) if errors else 0.0
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    figures["server_cpu_us_per_request"] = 1e6 * (cpu_seconds(server_pid) - cpu0) / requests
    return figures


def lua_script(path: Path, route: str, ids: int, delay_ms: float) -> Path:
    """A wrk script: GET ``route`` with a random id of ``ids``, after ``delay_ms``."""
    path.write_text(
        f"math.randomseed(os.time())\n"
        f"request = function()\n"
        f"  return wrk.format(\"GET\", string.format(\"{route}\", math.random(0, {ids - 1})))\n"
        f"end\n"
        + (f"delay = function() return {delay_ms:.3f} end\n" if delay_ms > 0 else ""))
    return path


def _serves(conn: http.client.HTTPConnection, user: str, seq: int) -> bool:
    conn.request("GET", f"/v1/users/{user}/recommendations?k=1")
    return json.loads(conn.getresponse().read())["seq"] == seq


def freshness(settings: Settings, port: int, samples: int, users: int) -> list[float]:
    """Seconds from commit_transaction() returning to the new list being served."""
    producer = kafka_config.producer(settings, transactional_id="bench-serve-freshness",
                                     acks="all", linger_ms=0)
    producer.init_transactions()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    rng = np.random.default_rng(1)
    delays = []
    for n in range(samples):
        user = f"u{int(rng.integers(users))}"
        rec = a_list(user, 1000 + n, int(time.time() * 1000))
        producer.begin_transaction()
        producer.send(settings.topics.recommendations, key=user.encode(), value=rec.to_bytes())
        producer.commit_transaction()
        t0 = time.perf_counter()
        # Asked again at once (no pause): the delay is the figure measured.
        if not wait_until(partial(_serves, conn, user, rec.seq), 10, interval_s=0):
            raise RuntimeError(f"list {rec.seq} of {user} not served within 10 s")
        delays.append(time.perf_counter() - t0)
        time.sleep(0.02)
    conn.close()
    producer.close()
    return delays


def fill_store(path: Path, settings: Settings, lists: int) -> float:
    """A store of ``lists`` users for the (empty) topics of ``settings``; seconds taken."""
    topics = settings.topics
    store = Store(path, 64 * 2**30, topics.recommendations, topics.item_embeddings)
    now = int(time.time() * 1000)
    t0 = time.perf_counter()
    batch: list[Change] = []
    for u in range(lists):
        rec = a_list(f"u{u}", 1, now)
        batch.append(Change(topics.recommendations, rec.user_id.encode(),
                            pack_list(rec, rec.to_bytes())))
        if len(batch) == 20_000:
            store.commit(batch, {})
            batch = []
    offsets = {(t, p): 0 for t in (topics.recommendations, topics.item_embeddings)
               for p in range(topics.partitions)}
    store.commit(batch, offsets)
    store.close()
    return time.perf_counter() - t0


def start_up(overrides: list[str], log: Path, user: str) -> dict[str, float]:
    """Seconds from starting ``freshrec serve`` to the first list served and to ready."""
    t0 = time.monotonic()
    serve = ServeProcess(overrides, log).start()
    first = float("nan")

    def served() -> bool:
        try:
            return serve.get(f"/v1/users/{user}/recommendations", timeout=2).status == 200
        except OSError:  # not listening yet
            return False

    try:
        if wait_until(served, 60 - (time.monotonic() - t0), interval_s=0.02):
            first = time.monotonic() - t0
        serve.wait_ready()
        ready = time.monotonic() - t0
    finally:
        serve.stop()
    return {"first_list_s": first, "ready_s": ready}


def plot(results: dict[str, Any], path: Path) -> None:
    """The latency curve: p50/p99 against the achieved rate, and the most requests/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paced = results["paced"]
    rates = [p["rps"] for p in paced]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(rates, [p["p50_ms"] for p in paced], "o-", label="p50")
    ax.plot(rates, [p["p99_ms"] for p in paced], "s-", label="p99")
    ax.axhline(10, color="grey", ls=":", label="goal: p99 10 ms")
    ax.axvline(results["max"]["rps"], color="tab:red", ls="--",
               label=f"most: {results['max']['rps']:,.0f}/s")
    ax.set_xlabel("requests/s (wrk, GET a random user's list of 100k, k=10)")
    ax.set_ylabel("latency (ms)")
    ax.set_title("freshrec serve on 2 shared cores")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--stored", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each wrk run")
    ap.add_argument("--samples", type=int, default=300, help="freshness samples")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "serve.json")
    ap.add_argument("--plot", type=Path, default=REPO_ROOT / "docs" / "img" / "serve.png")
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("bench_serve: needs wrk (Debian: apt-get install wrk)")

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    port, controller = free_ports(2)
    base = [f"local.port={port}", f"local.controller_port={controller}",
            f"local.state_dir={tmp / 'kafka'}", f"local.cache_dir={REPO_ROOT / '.cache'}",
            "topics.recommendations=bench.recs", "topics.item_embeddings=bench.items"]
    settings = load_settings(env={}, overrides=base)
    results: dict[str, Any] = {"users": args.users, "items": args.items,
                               "load_average_at_start": os.getloadavg()[0]}
    broker_up(settings, log=say)
    try:
        for topic in ("bench.recs", "bench.items"):
            create_topic(settings, topic, partitions=settings.topics.partitions, configs=COMPACT)
        took = fill_topics(settings, args.users, args.items)
        say(f"{args.users:,} lists and {args.items:,} items written in {took:.1f}s")
        overrides = [*base, f"kafka.bootstrap_servers=127.0.0.1:{port}",
                     f"serve.store_dir={tmp / 'store'}"]
        serve = ServeProcess(overrides, tmp / "serve.log").start()
        try:
            rebuild = serve.wait_ready(timeout_s=600)
            results["rebuild_s"] = rebuild
            say(f"store rebuilt from the topics in {rebuild:.1f}s "
                f"({(args.users + args.items) / rebuild:,.0f} records/s)")
            url = f"http://127.0.0.1:{serve.port}"
            assert serve.proc is not None
            pid = serve.proc.pid
            users_route = "/v1/users/u%d/recommendations?k=10"
            lua = lua_script(tmp / "max.lua", users_route, args.users, 0)
            results["max"] = wrk(url, lua, args.seconds, 2, 64, pid)
            say(f"recommendations, most requests/s: {results['max']}")
            similar = lua_script(tmp / "similar.lua", "/v1/items/item-%d/similar?k=10",
                                 args.items, 0)
            results["similar_max"] = wrk(url, similar, args.seconds, 2, 64, pid)
            say(f"similar items, most requests/s: {results['similar_max']}")
            results["paced"] = []
            for rate in PACED_RATES:
                delay = PACED_CONNECTIONS * 1000.0 / rate
                lua = lua_script(tmp / f"paced-{rate}.lua", users_route, args.users, delay)
                figures = {"target_rps": rate,
                           **wrk(url, lua, args.seconds, 2, PACED_CONNECTIONS, pid)}
                results["paced"].append(figures)
                say(f"paced at {rate}/s: {figures}")
            delays = freshness(settings, serve.port, args.samples, args.users)
            results["freshness_ms"] = {q: 1000 * percentile(delays, p) for q, p in
                                       (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))}
            say(f"freshness after commit (ms): {results['freshness_ms']}")
        finally:
            serve.stop()
        shutil.rmtree(tmp / "store")

        # Start-up with a big store: empty topics, so nothing is read from Kafka.
        for topic in ("bench.empty-recs", "bench.empty-items"):
            create_topic(settings, topic, partitions=settings.topics.partitions, configs=COMPACT)
        empty = [*overrides[:-1], "topics.recommendations=bench.empty-recs",
                 "topics.item_embeddings=bench.empty-items", f"serve.store_dir={tmp / 'big'}"]
        took = fill_store(tmp / "big", load_settings(env={}, overrides=empty), args.stored)
        size = sum(f.stat().st_blocks * 512 for f in (tmp / "big").iterdir())
        say(f"{args.stored:,} lists stored in {took:.1f}s ({size / 2**30:.2f} GiB on disk)")
        results["stored"] = {"lists": args.stored, "bytes": size,
                             **start_up(empty, tmp / "big.log", f"u{args.stored - 1}")}
        say(f"start-up with {args.stored:,} stored lists: {results['stored']}")
    finally:
        broker_down(settings, log=say)
        shutil.rmtree(tmp, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.plot)
    say(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
