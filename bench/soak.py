"""Soak: the real job at a steady offered load for minutes, watched from the outside.

A broker (started here, or ``--bootstrap``), the freshrec job on a MiniCluster (child
process, Prometheus reporter on), a paced producer of generated storefront events, and the
output consumer of ``bench.e2e_consumer``. Every ``--sample-s`` it prints and records:

* how far the output is behind the input (events sent and not yet reflected in any list,
  per user ``events_applied``) and the consumer lag of the recommendations topic;
* resident memory of the JVM (which hosts the tasks' Python interpreter in thread mode) and
  of the launching Python process;
* checkpoints completed / failed, the last checkpoint's size and duration (the job's
  JobManager metrics from the reporter) and the size of the newest checkpoint on disk.

Goals: lag bounded, memory flat after warm-up, zero failed checkpoints. Verdicts
compare the second half of the run against the first (warm-up: the first ``--warmup-s``).

Usage::

    .venv/bin/python -m bench.soak                          # 10 min at 1,500 events/s
    .venv/bin/python -m bench.soak --minutes 2 --rate 500   # a short look

Writes ``bench/results/soak.json`` and, when matplotlib is installed, ``docs/img/soak.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.bench_e2e import make_events
from bench.common import REPO_ROOT, machine, rss_mib, sample_sums, say
from bench.common import scrape as scrape_families
from bench.e2e_consumer import OutputConsumer
from bench.e2e_run import PipelineRun, RunConfig

JOB_METRICS = {
    "completed": "flink_jobmanager_job_numberOfCompletedCheckpoints",
    "failed": "flink_jobmanager_job_numberOfFailedCheckpoints",
    "last_size_bytes": "flink_jobmanager_job_lastCheckpointSize",
    "last_duration_ms": "flink_jobmanager_job_lastCheckpointDuration",
    "restarts": "flink_jobmanager_job_numRestarts",
    "heap_used_bytes": "flink_taskmanager_Status_JVM_Memory_Heap_Used",
}


def job_processes(pid: int) -> dict[str, list[int]]:
    """The job's processes by kind: the launcher and its descendants (the JVM it starts
    runs in a process group of its own)."""
    out: dict[str, list[int]] = {"jvm": [], "python": []}
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return out
    for proc in procs:
        try:
            exe = proc.exe()
        except psutil.Error:
            continue
        out["jvm" if exe.endswith("/java") else "python"].append(proc.pid)
    return out


def scrape(port: int) -> dict[str, float]:
    sums = sample_sums(scrape_families(port))
    return {key: sums[name] for key, name in JOB_METRICS.items() if name in sums}


def newest_checkpoint_bytes(checkpoint_dir: Path) -> int:
    done = sorted(checkpoint_dir.glob("*/chk-*/_metadata"), key=lambda p: p.stat().st_mtime)
    if not done:
        return 0
    # Incremental/shared files live beside chk-N; the job's whole footprint counts.
    job_dir = done[-1].parent.parent
    return sum(f.stat().st_size for f in job_dir.rglob("*") if f.is_file())


@dataclasses.dataclass
class Sample:
    t_s: float
    sent: int
    reflected: int
    behind: int
    consumer_lag: int
    # Distinct users and items sent so far: keyed state grows with these, not with time.
    users_seen: int
    items_seen: int
    jvm_rss_mb: float
    python_rss_mb: float
    checkpoints: dict[str, float]
    checkpoint_dir_mb: float


def slope_per_min(points: list[tuple[float, float]]) -> float:
    import numpy as np

    if len(points) < 2:
        return 0.0
    t, v = np.asarray(points).T
    return float(np.polyfit(t / 60.0, v, 1)[0])


def verdicts(samples: list[Sample], warmup_s: float) -> dict[str, Any]:
    steady = [s for s in samples if s.t_s >= warmup_s]
    half = len(steady) // 2
    first, second = steady[:half], steady[half:]
    out: dict[str, Any] = {}
    if first and second:
        out["behind_max_first_half"] = max(s.behind for s in first)
        out["behind_max_second_half"] = max(s.behind for s in second)
        # Bounded: the backlog does not keep growing (a flat or falling maximum).
        out["lag_bounded"] = out["behind_max_second_half"] <= 1.5 * max(
            out["behind_max_first_half"], 200)
        for kind in ("jvm", "python"):
            key = f"{kind}_rss_mb"
            pts = [(s.t_s, getattr(s, key)) for s in steady]
            out[f"{kind}_rss_mb_per_min_after_warmup"] = round(slope_per_min(pts), 2)
            out[f"{kind}_rss_growth_pct_after_warmup"] = round(
                100.0 * (pts[-1][1] - pts[0][1]) / max(pts[0][1], 1.0), 1)
        out["memory_flat"] = all(
            abs(out[f"{k}_rss_growth_pct_after_warmup"]) <= 10.0 for k in ("jvm", "python"))
    last = samples[-1].checkpoints if samples else {}
    at_warmup = steady[0].checkpoints if steady else {}
    out["checkpoints_completed"] = int(last.get("completed", 0))
    out["checkpoints_failed"] = int(last.get("failed", 0))
    # Flink counts a trigger while the tasks are still starting as a failed checkpoint;
    # the goal is about the running job.
    out["checkpoints_failed_after_warmup"] = int(last.get("failed", 0)
                                                 - at_warmup.get("failed", 0))
    out["job_restarts"] = int(last.get("restarts", 0))
    out["zero_failed_checkpoints"] = out["checkpoints_failed_after_warmup"] == 0
    return out


def plot(samples: list[Sample], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    t = [s.t_s / 60.0 for s in samples]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    ax1.plot(t, [s.behind for s in samples], label="events not yet reflected")
    ax1.set_ylabel("events behind")
    ax2.plot(t, [s.jvm_rss_mb for s in samples], label="JVM (tasks + embedded Python)")
    ax2.plot(t, [s.python_rss_mb for s in samples], label="launcher Python")
    ax2.set_ylabel("RSS (MiB)")
    ax2.legend()
    ax3.plot(t, [s.checkpoints.get("last_size_bytes", 0) / 1e6 for s in samples],
             label="last checkpoint size (MB)")
    ax3.plot(t, [s.checkpoints.get("last_duration_ms", 0) / 1000 for s in samples],
             label="last checkpoint duration (s)")
    ax3.set_xlabel("minutes")
    ax3.legend()
    fig.suptitle("freshrec soak: steady load, checkpoint every 10 s")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=1500.0, help="offered events/s")
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--warmup-s", type=float, default=120.0,
                    help="start-up and catching up with the backlog built meanwhile")
    ap.add_argument("--jvm-heap", default="1g",
                    help="-Xms/-Xmx of the job's JVM, so RSS shows growth, not heap sizing")
    ap.add_argument("--checkpoint-interval-ms", type=int, default=10_000)
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--items", type=int, default=10000)
    ap.add_argument("--bootstrap", help="reuse this broker (PLAINTEXT) instead of starting one")
    ap.add_argument("--set", dest="extra_sets", action="append", default=[])
    ap.add_argument("--keep", action="store_true", help="keep the work dir (job and Flink logs)")
    ap.add_argument("--json", default=str(REPO_ROOT / "bench" / "results" / "soak.json"))
    ap.add_argument("--plot", default=str(REPO_ROOT / "docs" / "img" / "soak.png"))
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    from devstack.kafka_broker import broker_down, broker_up
    from devstack.processes import free_ports
    from freshrec_common import kafka_config
    from freshrec_common.settings import load_settings
    from schemas.events import encode_event

    cache_dir = os.environ.get("FRESHREC_LOCAL_CACHE_DIR", str(REPO_ROOT / ".cache"))
    work = Path(tempfile.mkdtemp(prefix="freshrec-soak-"))
    info = machine()
    say(f"machine: {info['cpus']} CPUs ({info['cpu']}), {info['memory']}; work dir {work}")
    started_broker = None
    if args.bootstrap:
        bootstrap = [f"kafka.bootstrap_servers={args.bootstrap}"]
    else:
        port, cport = free_ports(2)
        bootstrap = [f"kafka.bootstrap_servers=127.0.0.1:{port}"]
        started_broker = load_settings(overrides=[
            f"local.port={port}", f"local.controller_port={cport}",
            f"local.state_dir={work / 'kafka'}", f"local.cache_dir={cache_dir}", *bootstrap])
        broker_up(started_broker, log=say)
    bootstrap += ["kafka.security_protocol=PLAINTEXT", "kafka.sasl_mechanism="]
    kwargs = kafka_config.client_kwargs(load_settings(overrides=bootstrap))
    # The JVM's default max heap is 1/4 of RAM: RSS would grow towards it whatever the job
    # does. A fixed heap leaves RSS to show native growth (Python, RocksDB, buffers).
    os.environ["JVM_ARGS"] = f"-Xms{args.jvm_heap} -Xmx{args.jvm_heap}"
    cfg = RunConfig("job", 1, "at-least-once", bootstrap, kwargs, cache_dir, work,
                    [f"job.checkpoint_interval_ms={args.checkpoint_interval_ms}",
                     *args.extra_sets], metrics=True)
    run = PipelineRun(cfg, args)
    samples: list[Sample] = []
    try:
        # The catalogue block first, as storefronts announce items before they sell them.
        args.events, args.seed = 0, 1
        shop, catalogue = make_events(args)
        run.preload(catalogue)
        run.consumer = OutputConsumer(kwargs, run.settings.topics.recommendations)
        run.start()
        producer = run._producer()
        topic = run.settings.topics.events
        duration = args.minutes * 60.0
        say(f"job started (log {run.log_path}); offering {args.rate:,.0f} events/s for "
            f"{args.minutes:g} min, checkpoint every {args.checkpoint_interval_ms / 1000:g} s")
        events = iter(shop.events(int(args.rate * duration) + 1))
        t0 = time.time()
        next_sample = t0 + args.sample_s
        sent = 0
        interactions = 0
        users: set[str] = set()
        items: set[str] = set()
        while True:
            now = time.time()
            if now - t0 >= duration:
                break
            due = int((now - t0) * args.rate)
            while sent < due:
                ev = dataclasses.replace(next(events), ts_ms=int(time.time() * 1000))
                interaction = ev.event_type != "item_upsert"
                key = (ev.user_id if interaction else ev.item_id) or ""
                producer.send(topic, key=key.encode(), value=encode_event(ev))
                interactions += interaction
                sent += 1
                if ev.user_id:
                    users.add(ev.user_id)
                if ev.item_id:
                    items.add(ev.item_id)
            if now >= next_sample:
                next_sample += args.sample_s
                run.alive()
                reflected, _, _, lag = run.consumer.ask("progress")
                procs = job_processes(run.proc.pid)
                try:
                    ckpt = scrape(run.metrics_port)
                except OSError:
                    ckpt = {}
                s = Sample(
                    t_s=round(now - t0, 1), sent=interactions, reflected=reflected,
                    behind=interactions - reflected, consumer_lag=lag,
                    users_seen=len(users), items_seen=len(items),
                    jvm_rss_mb=round(sum(rss_mib(p) or 0.0 for p in procs["jvm"]), 1),
                    python_rss_mb=round(sum(rss_mib(p) or 0.0 for p in procs["python"]), 1),
                    checkpoints=ckpt,
                    checkpoint_dir_mb=round(newest_checkpoint_bytes(
                        Path(run.settings.job.checkpoint_dir)) / 1e6, 2))
                samples.append(s)
                say(f"t={s.t_s:6.0f}s sent {s.sent:>8,} behind {s.behind:>6,} "
                    f"users {s.users_seen:,} items {s.items_seen:,} "
                    f"| JVM {s.jvm_rss_mb:7.0f} MiB, Python {s.python_rss_mb:5.0f} MiB | "
                    f"checkpoints {int(ckpt.get('completed', 0))} ok / "
                    f"{int(ckpt.get('failed', 0))} failed, last "
                    f"{ckpt.get('last_size_bytes', 0) / 1e6:.2f} MB in "
                    f"{ckpt.get('last_duration_ms', 0):.0f} ms; on disk {s.checkpoint_dir_mb} MB;"
                    f" heap used {ckpt.get('heap_used_bytes', 0) / 2**20:.0f} MiB")
            time.sleep(0.002)
        producer.flush(timeout=60)
    finally:
        run.stop()
        if started_broker is not None:
            broker_down(started_broker, log=say)
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    result = {"machine": info, "command": " ".join(["-m", "bench.soak", *(argv or sys.argv[1:])]),
              "rate": args.rate, "minutes": args.minutes, "jvm_heap": args.jvm_heap,
              "extra_sets": args.extra_sets,
              "checkpoint_interval_ms": args.checkpoint_interval_ms,
              "verdicts": verdicts(samples, args.warmup_s),
              "samples": [dataclasses.asdict(s) for s in samples]}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    plotted = plot(samples, Path(args.plot))
    print(json.dumps(result["verdicts"], indent=2))
    print(f"JSON: {args.json}" + (f"; plot: {args.plot}" if plotted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
