"""End-to-end benchmark: Kafka -> Flink -> Kafka, the freshrec job next to an identity job
and a Java-only passthrough.

The pipelines run as child processes (a Flink MiniCluster each, thread mode) against a real
broker, on fresh uniquely named topics, one after the other, in the same run:

* ``job``: the real freshrec job (``python -m flink_jobs.recommender_job --set ...``);
* ``identity``: the same Kafka source, a per-record parse (with its DLQ sink), ``key_by(user)``
  and Kafka sink, but the model is a trivial keyed operator that emits one recommendation
  v1 record per event (its only state is a per-user counter), in
  :mod:`bench.e2e_pipelines`: the per-record data flow's floor (one Python call per record
  for parse and for the keyed model);
* ``passthrough``: the same Kafka source and sink with a Java map between them and no Python
  at all: the ceiling of this machine (:mod:`bench.e2e_pipelines`).

Throughput (max sustained). N generated events (a whole-catalogue ``item_upsert`` block,
then the storefront stream; keys as in the integration harness) are pre-loaded into the
events topic; the pipeline is then started and reads them as fast as it can. Progress is
read from the *output*: a consumer of the recommendations topic keeps, per user, the
largest ``events_applied`` seen; their sum is the number of interaction events whose effect
has reached Kafka. Throughput is the slope of that curve between 10 % and 90 % of all
interaction events, which leaves out JVM start-up, the catalogue block and the tail. It is
exact for coalesced output (the job publishes at most one list per user per
``job.refresh_interval_ms``) and does not depend on Flink's offset commits (which happen
only at checkpoints).

Latency at fixed offered load. With the pipeline still running, events are produced at a
fixed rate with ``ts`` = wall-clock send time (ms); the consumer stamps every list with its
consume time. Two figures per rate:

* list latency = consume time - ``last_event_ts`` of each list (the issue's definition: the
  age of the newest event a list reflects);
* event latency = for every event, consume time of the first list of its user whose
  ``events_applied`` covers it. This includes coalescing: an event that arrives while a
  refresh is owed waits for it (up to ``job.refresh_interval_ms``), and Java holds a bundle
  for up to ``job.bundle_max_age_ms``.

The producer, the consumer and both pipelines share this machine's CPUs, as they would in
a single-node deployment; the achieved offered rate is reported next to the target.

Usage::

    .venv/bin/python -m bench.bench_e2e                   # p=1, at-least-once (< ~6 min)
    .venv/bin/python -m bench.bench_e2e --parallelism 1 2 --delivery at-least-once exactly-once
    .venv/bin/python -m bench.bench_e2e --bootstrap 127.0.0.1:9092   # reuse a broker
    .venv/bin/python -m bench.bench_e2e --quick                       # smoke run

Prints a table and writes ``bench/results/e2e.json``. Goals: job >= 20k events/s
sustained, p99 <= 250 ms at half of max load (at-least-once), job throughput >= 50 % of
the identity pipeline.
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
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, machine, say
from bench.e2e_report import GOAL_P99_MS, GOAL_RATE, GOAL_RATIO, plot, table, verdicts
from bench.e2e_run import PipelineRun, RunConfig
from devstack.processes import free_ports

PIPELINES = ("job", "identity", "passthrough")


# ============================================================================ output consumer
# A separate process so that the producer's pacing and the consumer's stamps do not share
# one GIL. It reads the recommendations topic from the start, forever, and answers commands.


# ============================================================================ helpers


# ============================================================================ one pipeline run


# ============================================================================ driver

def storefront_events(seed: int, n_users: int, n_items: int, n: int, start: int
                      ) -> tuple[Any, list[Any]]:
    """A fresh storefront and its first events: the catalogue block (one ``item_upsert``
    per item at ``start``), then ``n`` events of its stream from ``start`` on."""
    from freshrec.generator import Storefront
    from schemas.events import Event

    shop = Storefront(seed=seed, n_users=n_users, n_items=n_items, mean_gap_ms=1.0,
                      start_ts_ms=start)
    t = shop.truth
    out = []
    for item in sorted(t.item_category, key=lambda s: int(s[1:])):
        shop._announced.add(item)  # no second announcement inside the stream
        out.append(Event(f"cat-{item}", "item_upsert", start, item_id=item,
                         price=t.item_price[item], category=t.item_category[item],
                         brand=t.item_brand[item],
                         title=f"{t.item_brand[item]} {t.item_category[item]} item {item}",
                         available=True))
    out += shop.events(n)
    return shop, out


def make_events(args: argparse.Namespace) -> tuple[Any, list[tuple[bytes, bytes, bool]]]:
    """A fresh storefront (same seed every call) and its encoded preload."""
    from schemas.events import encode_event

    n = args.events
    # Event times end at "now", so the later live phases continue the same clock.
    shop, events = storefront_events(args.seed, args.users, args.items, n,
                                     int(time.time() * 1000) - n)
    out: list[tuple[bytes, bytes, bool]] = []
    for ev in events:
        interaction = ev.event_type != "item_upsert"
        key = ev.user_id if interaction else ev.item_id
        out.append(((key or "").encode(), encode_event(ev), interaction))
    return shop, out


def auto_rates(job_max: float, given: list[float] | None) -> list[float]:
    if given:
        return given
    half = max(100.0, round(job_max / 2 / 100) * 100)
    rates = {half}
    for r in (500.0, 1000.0, 2000.0):
        if r < 0.8 * job_max and r < half:
            rates.add(r)
    return sorted(rates)[-4:]


def run_pipeline(cfg: RunConfig, args: argparse.Namespace, rates: list[float] | None,
                 own_half: bool = False) -> dict[str, Any]:
    say(f"=== {cfg.pipeline}: parallelism {cfg.parallelism}, {cfg.delivery}")
    t0 = time.monotonic()
    shop, encoded = make_events(args)
    run = PipelineRun(cfg, args)
    try:
        run.preload(encoded)
        del encoded
        run.throughput(args.throughput_timeout)
        max_rate = run.result["throughput"]["events_per_s"]
        rates = auto_rates(max_rate, rates)
        half = round(max_rate / 2 / 100) * 100
        if own_half and half >= 100 and half not in rates:
            rates = sorted([*rates, half])
        run.result["rates_planned"] = rates
        drained = run.result["throughput"]["completed"]
        for rate in rates:
            if not drained:
                say(f"{run.tag}: skipping {rate:,.0f}/s: the pre-loaded backlog was not drained "
                    "(rerun with fewer --events or a longer --throughput-timeout)")
                run.result.setdefault("latency", []).append(
                    {"target_rate": rate, "skipped": "backlog not drained"})
                continue
            if rate > 0.9 * max_rate:
                say(f"{run.tag}: skipping {rate:,.0f}/s (above 90% of this pipeline's max)")
                run.result.setdefault("latency", []).append(
                    {"target_rate": rate, "skipped": "above 90% of max throughput"})
                continue
            run.latency(shop, rate, args.warmup, args.measure)
    finally:
        run.stop()
    run.result["wall_s"] = round(time.monotonic() - t0, 1)
    run.result["tag"] = run.tag
    return run.result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", help="reuse this broker (PLAINTEXT) instead of starting one")
    ap.add_argument("--parallelism", type=int, nargs="+", default=[1])
    ap.add_argument("--delivery", nargs="+", default=["at-least-once"],
                    choices=["at-least-once", "exactly-once"])
    ap.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=PIPELINES)
    ap.add_argument("--events", type=int, default=60_000,
                    help="generated events pre-loaded for the throughput phase")
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--items", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rates", type=float, nargs="+",
                    help="offered loads (events/s); default: half of the job's max, plus "
                         "500/1000/2000 when below it")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    ap.add_argument("--measure", type=float, default=10.0, help="seconds measured per rate")
    # A backlog drains in ~15 s on a quiet machine; the cap only matters on a slow day,
    # where a short one leaves the job without latency figures.
    ap.add_argument("--throughput-timeout", type=float, default=180.0,
                    help="cap on the throughput phase after the first output (s)")
    ap.add_argument("--set", dest="extra_sets", action="append", default=[],
                    help="extra section.key=value for both pipelines "
                         "(e.g. job.refresh_interval_ms=100)")
    ap.add_argument("--cluster", action="store_true",
                    help="run the job (not identity) on a standalone cluster of --parallelism "
                         "TaskManagers with one slot each: one Python interpreter per subtask")
    ap.add_argument("--no-metrics", action="store_true",
                    help="do not enable the Flink Prometheus reporter (busy time per task)")
    ap.add_argument("--json", default=str(REPO_ROOT / "bench" / "results" / "e2e.json"))
    ap.add_argument("--plot", default=str(REPO_ROOT / "docs" / "img" / "e2e.png"),
                    help="PNG written when matplotlib is installed")
    ap.add_argument("--quick", action="store_true", help="smoke run: 20k events, short phases")
    args = ap.parse_args(argv)
    # SIGTERM cleans up like Ctrl-C: the jobs, the consumer and the broker we started.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    if args.quick:
        args.events, args.measure, args.warmup = 20_000, 4.0, 1.0
        args.users, args.items = 1000, 2000
        args.throughput_timeout = 40.0

    from devstack.kafka_broker import broker_down, broker_up
    from freshrec_common import kafka_config
    from freshrec_common.settings import load_settings

    cache_dir = os.environ.get("FRESHREC_LOCAL_CACHE_DIR", str(REPO_ROOT / ".cache"))
    work = Path(tempfile.mkdtemp(prefix="freshrec-bench-e2e-"))
    started_broker = None
    t_run = time.monotonic()
    info = machine()
    say(f"machine: {info['cpus']} CPUs ({info['cpu']}), {info['memory']}, load "
        f"{' '.join(f'{x:.2f}' for x in info['loadavg_at_start'])}; work dir {work}")
    if args.bootstrap:
        bootstrap_overrides = [f"kafka.bootstrap_servers={args.bootstrap}",
                               "kafka.security_protocol=PLAINTEXT", "kafka.sasl_mechanism="]
        broker_desc = f"given: {args.bootstrap}"
    else:
        port, cport = free_ports(2)
        broker_sets = [f"local.port={port}", f"local.controller_port={cport}",
                       "local.host=127.0.0.1", f"local.state_dir={work / 'kafka'}",
                       f"local.cache_dir={cache_dir}"]
        bootstrap_overrides = [f"kafka.bootstrap_servers=127.0.0.1:{port}",
                               "kafka.security_protocol=PLAINTEXT", "kafka.sasl_mechanism=",
                               "kafka.client_id=freshrec-bench"]
        broker_settings = load_settings(overrides=[*broker_sets, *bootstrap_overrides])
        say(f"starting a Kafka broker on 127.0.0.1:{port}")
        broker_up(broker_settings, log=lambda m: say(m))
        started_broker = broker_settings
        broker_desc = f"started by the bench: Kafka {broker_settings.local.kafka_version}, " \
                      f"single KRaft node, heap {broker_settings.local.broker_heap}"
    results: list[dict[str, Any]] = []
    cluster_sets: list[str] | None = None
    if args.cluster:
        from devstack import flink_cluster

        args.pipelines = ["job"]
        rest, rpc = free_ports(2)
        cluster_sets = [f"cluster.state_dir={work / 'cluster'}", f"cluster.rest_port={rest}",
                        f"cluster.rpc_port={rpc}", f"cluster.taskmanagers={max(args.parallelism)}",
                        "cluster.slots_per_taskmanager=1", f"local.cache_dir={cache_dir}"]
        cluster_settings = load_settings(overrides=[*bootstrap_overrides, *cluster_sets])
        say(f"starting a standalone cluster: {max(args.parallelism)} TaskManagers x 1 slot")
        flink_cluster.cluster_up(cluster_settings, log=say)
    try:
        base = load_settings(overrides=[*bootstrap_overrides, f"local.cache_dir={cache_dir}"])
        kwargs = kafka_config.client_kwargs(base)
        kwargs["client_id"] = "freshrec-bench"
        for p in args.parallelism:
            for d in args.delivery:
                rates = args.rates
                for pipe in args.pipelines:
                    cfg = RunConfig(pipe, p, d, bootstrap_overrides, kwargs, cache_dir, work,
                                    args.extra_sets, not args.no_metrics and not args.cluster,
                                    cluster_sets)
                    # The identity pipeline is measured at the job's rates (side by side)
                    # and at half of its own max.
                    try:
                        res = run_pipeline(cfg, args, rates,
                                           own_half=pipe != "job" and not args.rates)
                    except Exception as exc:  # report it, measure the rest
                        say(f"{pipe} p={p} {d} FAILED: {exc}")
                        res = {"pipeline": pipe, "parallelism": p, "delivery": d,
                               "error": str(exc)[:2000],
                               "throughput": {"events_per_s": 0.0}}
                    results.append(res)
                    if pipe == "job" and "rates_planned" in res:
                        rates = res["rates_planned"]
    finally:
        if cluster_sets is not None:
            flink_cluster.cluster_down(cluster_settings, log=say)
        if started_broker is not None:
            broker_down(started_broker, log=lambda m: say(m))
        if any("error" in r for r in results):
            say(f"kept {work} (job logs of the failed runs)")
        else:
            shutil.rmtree(work, ignore_errors=True)
    total_s = time.monotonic() - t_run
    out = {"machine": info, "broker": broker_desc, "command": " ".join(
        [".venv/bin/python", "-m", "bench.bench_e2e", *argv]),
        "settings": {"events": args.events, "users": args.users, "items": args.items,
                     "seed": args.seed, "warmup_s": args.warmup, "measure_s": args.measure,
                     "extra_sets": args.extra_sets},
        "goals": {"events_per_s": GOAL_RATE, "p99_ms": GOAL_P99_MS, "ratio": GOAL_RATIO},
        "results": results, "verdicts": verdicts(results), "total_s": round(total_s, 1)}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str) + "\n", "utf-8")
    print()
    print(table(results))
    print()
    for line in out["verdicts"]:
        print(line)
    ok = [r for r in results if "error" not in r]
    if plot(results, Path(args.plot)):
        print(f"plot: {args.plot}")
    print(f"\nrefresh_interval_ms={ok[0]['refresh_interval_ms'] if ok else '?'} "
          f"(coalescing), bundle_max_age_ms="
          f"{ok[0]['bundle_max_age_ms'] if ok else '?'} (bundling); "
          f"total {total_s:.0f}s; JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
