"""State scale: bytes per user and per item in Flink state, checkpoint size and duration.

The real job learns a few thousand events/s, too slow to build a million users quickly. This script
runs a small PyFlink job instead (thread mode, built with ``make_environment`` and the job's
jars, so the Flink configuration is the real job's) that fills keyed state exactly as the
real operators lay it out, at full speed:

* ``user-fill``, keyed by user shard: the descriptors of the job's user side
  (``flink_jobs.operators.user_state_descriptors``) -- MapState ``users``, user id ->
  ``pack_user_value`` bytes (TTL ``job.user_state_ttl_days``) -- with steady-state users: a
  learned vector, a full history of ``model.history_len`` items, the purchased/seen sets the
  model core builds, ``--dedup-ids`` recent event ids (UUID text, hashed, sent at random
  times within ``job.dedup_window_s``) and the list last shown (hashes of the user's own
  items);
* ``item-fill``, keyed by item shard: the descriptors of the item side
  (``item_state_descriptors``) -- MapState ``items``, item id -> ``ItemState.to_bytes()`` of
  an item with metadata that has learned from a few gradients (its upsert ids and publish
  schedule stay empty, as in steady state).

Users are built by the model core: a few template users learn ``--events-per-user``
events each with ``learn_bundle``; every filled user is a template with its own id, its own
vector (template + noise, so nothing compresses unrealistically) and its history, purchased
and seen ids shifted to other catalogue items. Items go through ``new_item_state`` and
``apply_gradients_to_items``.

Input: two Kafka topics pre-loaded with N and M tiny records (the index, as ASCII digits),
read with ``flink_jobs.kafka_io.raw_source``. The source stays open after the backlog, so
the job idles and keeps checkpointing. A Flink counter per side (scraped from the Prometheus
reporter) tells when every record is in state; the measured checkpoint is the first one
*triggered* after that moment (from the REST API's checkpoint history, which also gives
the size per operator; Prometheus' ``lastCheckpoint*`` gauges are kept as a cross-check).

Per backend (hashmap, rocksdb full, rocksdb incremental) and user count it reports fill
time, checkpoint size (``checkpointed_size`` = what this checkpoint wrote, ``state_size`` =
full size) and duration, JVM RSS and heap used after a full GC (``jcmd``), the RocksDB local
directory size, and bytes per user / per item against the raw float32 vector (dim * 4)
and against vector + bounded history.

Usage::

    .venv/bin/python -m bench.bench_state                      # 100k and 1M users, 100k items
    .venv/bin/python -m bench.bench_state --users 100000 --backends hashmap --dim 64
    .venv/bin/python -m bench.bench_state --quick               # smoke run (20k users, 5k items)
    .venv/bin/python -m bench.bench_state _plot bench/results/state.json docs/img/state_scale.png

Prints a table and verdicts, writes ``bench/results/state.json`` and the plot.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, RESULTS_DIR
from bench.state_fill import FillSpec, raw_sizes
from bench.state_report import BACKENDS, derive, plot, table, verdicts
from bench.state_run import FillRun, RunPlan, preload, say


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_plot":
        plot(json.loads(Path(argv[1]).read_text()), Path(argv[2]))
        return 0
    from bench.common import machine
    from devstack.kafka_broker import broker_down, broker_up
    from devstack.kafka_topics import create_topic
    from devstack.processes import free_ports
    from freshrec_common import kafka_config
    from freshrec_common.settings import load_settings

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", help="reuse this broker (PLAINTEXT) instead of starting one")
    ap.add_argument("--users", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument("--dim", type=int, help="model.dim (default: the settings', 32)")
    ap.add_argument("--dedup-ids", type=int, default=20,
                    help="recent event ids per user (in RefreshState.recent_ids)")
    ap.add_argument("--event-id-chars", type=int, default=36,
                    help="length of each event id (36 = UUID text)")
    ap.add_argument("--events-per-user", type=int,
                    help="events each template user learns (default: model.history_len)")
    ap.add_argument("--heap", default="", help="JVM -Xmx of the fill job (default: JVM's)")
    ap.add_argument("--fill-timeout", type=float, default=3600.0)
    ap.add_argument("--checkpoint-timeout", type=float, default=900.0)
    ap.add_argument("--no-gc", action="store_true", help="skip jcmd GC.run / heap_info")
    ap.add_argument("--set", dest="extra_sets", action="append", default=[],
                    help="extra section.key=value for the fill job")
    ap.add_argument("--json", default=str(RESULTS_DIR / "state.json"))
    ap.add_argument("--plot", default=str(REPO_ROOT / "docs" / "img" / "state_scale.png"))
    ap.add_argument("--quick", action="store_true", help="smoke run: 20k users, 5k items")
    ap.add_argument("--keep", action="store_true", help="keep checkpoints and logs")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    if args.quick:
        args.users, args.items = [20_000], 5_000

    cache_dir = os.environ.get("FRESHREC_LOCAL_CACHE_DIR", str(REPO_ROOT / ".cache"))
    work = Path(tempfile.mkdtemp(prefix="freshrec-bench-state-"))
    info = machine()
    say(f"machine: {info['cpus']} CPUs ({info['cpu']}), {info['memory']}, load "
        f"{' '.join(f'{x:.2f}' for x in info['loadavg_at_start'])}; work dir {work}")
    sets = [f"local.cache_dir={cache_dir}", *args.extra_sets]
    if args.dim:
        sets.append(f"model.dim={args.dim}")
    started = None
    if args.bootstrap:
        boot = [f"kafka.bootstrap_servers={args.bootstrap}",
                "kafka.security_protocol=PLAINTEXT", "kafka.sasl_mechanism="]
    else:
        port, cport = free_ports(2)
        boot = [f"kafka.bootstrap_servers=127.0.0.1:{port}", "kafka.security_protocol=PLAINTEXT",
                "kafka.sasl_mechanism=", "kafka.client_id=freshrec-bench"]
        started = load_settings(overrides=[
            f"local.port={port}", f"local.controller_port={cport}", "local.host=127.0.0.1",
            f"local.state_dir={work / 'kafka'}", f"local.cache_dir={cache_dir}", *boot])
        say(f"starting a Kafka broker on 127.0.0.1:{port}")
        broker_up(started, log=say)
    base_sets = [*boot, *sets]
    settings = load_settings(overrides=base_sets)
    config = settings.model
    args.events_per_user = args.events_per_user or config.history_len
    spec = FillSpec(args.items, args.dedup_ids, args.events_per_user, args.event_id_chars)
    raw = raw_sizes(config, spec, settings.job.dedup_window_s)
    say(f"raw (Python): UserState {raw['user_state_bytes']:.0f} B (vector "
        f"{raw['vector_bytes']}, bounded history {raw['bounded_history_bytes']:.0f}, seen ids "
        f"{raw['seen_ids']:.0f}), pickled value {raw['pickled_value_bytes']:.0f} B (recent "
        f"event ids {raw['recent_ids_bytes']:.0f}); ItemState {raw['item_state_bytes']:.0f} B")
    kwargs = kafka_config.client_kwargs(settings)
    kwargs["client_id"] = "freshrec-bench-state"
    results: list[dict[str, Any]] = []
    t_run = time.monotonic()
    try:
        run_id = uuid.uuid4().hex[:6]
        items_topic = f"bench-state-{run_id}.items"
        create_topic(settings, items_topic, partitions=1)
        preload(kwargs, items_topic, args.items)
        for n in args.users:
            users_topic = f"bench-state-{run_id}.users-{n}"
            create_topic(settings, users_topic, partitions=1)
            preload(kwargs, users_topic, n)
            for backend in args.backends:
                say(f"=== {backend}: {n:,} users, {args.items:,} items")
                run = FillRun(RunPlan(backend, n, args.items, users_topic, items_topic), args,
                              base_sets, work)
                try:
                    res = run.go()
                except Exception as exc:  # report it, measure the rest
                    say(f"{run.tag} FAILED: {exc}")
                    res = {"backend": backend, "users": n, "items": args.items,
                           "error": str(exc)[:2000], "log": str(run.log_path)}
                finally:
                    run.stop()
                if "error" not in res and not args.keep:
                    shutil.rmtree(run.dir, ignore_errors=True)  # GBs of checkpoints at 1M
                results.append(res)
    finally:
        if started is not None:
            broker_down(started, log=say)
        if not args.keep and not any("error" in r for r in results):
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"kept {work} (logs of the failed runs)")
    derive(results, raw)
    doc = {"machine": info, "command": " ".join([".venv/bin/python", "-m", "bench.bench_state",
                                                   *argv]),
           "dim": config.dim, "history_len": config.history_len, "dedup_ids": args.dedup_ids,
           "event_id_chars": args.event_id_chars, "events_per_user": args.events_per_user,
           "checkpoint_interval_ms": settings.job.checkpoint_interval_ms,
           "heap": args.heap or "JVM default", "raw": raw, "results": results,
           "verdicts": verdicts(results, raw), "total_s": round(time.monotonic() - t_run, 1)}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n", "utf-8")
    if args.plot and any("error" not in r for r in results):
        plot(doc, Path(args.plot))
    print()
    print(table(results))
    print()
    for line in doc["verdicts"]:
        print(line)
    print(f"\nraw: {json.dumps(raw)}")
    print(f"total {doc['total_s']:.0f}s; JSON: {path}; plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
