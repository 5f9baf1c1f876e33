"""One pipeline of the end-to-end benchmark (:mod:`bench.bench_e2e`) on fresh topics: start
it (a child process, or a submission to a standalone cluster), pre-load and measure
throughput, then latency at fixed offered loads."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.common import CHILD_ENV, REPO_ROOT, say, scrape
from bench.e2e_consumer import OutputConsumer
from devstack.processes import free_ports, kill_tree
from freshrec_common.polling import wait_until

_TS_MARK = 4_102_444_800_000  # 2100-01-01: a ts no generated event has


def _split_at_ts(ev: Any) -> tuple[bytes, bytes, bytes, bool]:
    """An event's Kafka key and its encoded value split around ``ts`` (set at send time),
    and whether it is an interaction."""
    from schemas.events import encode_event

    mark = b'"ts":%d' % _TS_MARK
    before, *after = encode_event(dataclasses.replace(ev, ts_ms=_TS_MARK)).split(mark)
    if len(after) != 1:
        raise ValueError(f"event {ev.event_id}: its encoding holds ts {len(after)} times")
    interaction = ev.event_type != "item_upsert"
    key = (ev.user_id if interaction else ev.item_id or "").encode()
    return key, before + b'"ts":', after[0], interaction


def percentiles(values: list[float]) -> dict[str, float | None]:
    import numpy as np

    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    a = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"n": int(a.size), "p50": round(float(p50), 1), "p95": round(float(p95), 1),
            "p99": round(float(p99), 1), "max": round(float(a.max()), 1)}


def scrape_metrics(port: int) -> dict[str, Any]:
    """Busy/back-pressured time per task, records/s per operator and the last checkpoint's
    duration (trigger to the last acknowledgement) from the reporter."""
    families = scrape(port)
    if not families:
        return {"error": f"no metrics on port {port}"}
    tasks: dict[str, dict[str, float]] = defaultdict(dict)
    ops: dict[str, float] = defaultdict(float)
    checkpoint_ms = checkpoint_bytes = None
    for s in (s for family in families for s in family.samples):
        name, labels, v = s.name, s.labels, s.value
        if name == "flink_jobmanager_job_lastCheckpointDuration":
            checkpoint_ms = v
        elif name == "flink_jobmanager_job_lastCheckpointSize":
            checkpoint_bytes = v
        short = name.rsplit("_", 1)[-1]
        if name.startswith("flink_taskmanager_job_task_") and "operator" not in name and short in (
                "busyTimeMsPerSecond", "backPressuredTimeMsPerSecond", "idleTimeMsPerSecond"):
            key = f"{labels.get('task_name', '?')}#{labels.get('subtask_index', '?')}"
            tasks[key][short] = v
        elif name == "flink_taskmanager_job_task_operator_numRecordsInPerSecond":
            ops[f"{labels.get('operator_name', '?')}#{labels.get('subtask_index', '?')}"] += v
    return {"tasks": {k: tasks[k] for k in sorted(tasks)},
            "operator_records_in_per_s": {k: round(v, 1) for k, v in sorted(ops.items())},
            "last_checkpoint_ms": checkpoint_ms, "last_checkpoint_bytes": checkpoint_bytes}


def print_metrics(m: dict[str, Any]) -> None:
    if "error" in m:
        say(f"  metrics: {m['error']}")
        return
    for task, vals in m["tasks"].items():
        name = task if len(task) < 110 else task[:80] + "..." + task[-25:]
        say(f"  task {name}: busy {vals.get('busyTimeMsPerSecond', float('nan')):.0f} "
            f"backpressured {vals.get('backPressuredTimeMsPerSecond', float('nan')):.0f} "
            f"idle {vals.get('idleTimeMsPerSecond', float('nan')):.0f} ms/s")
    for op, v in m["operator_records_in_per_s"].items():
        if v > 0:
            say(f"  operator {op}: {v:,.0f} records in/s")
    if m["last_checkpoint_ms"] is not None:
        size = m.get("last_checkpoint_bytes")
        say(f"  last checkpoint: {m['last_checkpoint_ms']:,.0f} ms"
            + ("" if size is None else f", {size / 1e6:,.2f} MB"))


@dataclasses.dataclass
class RunConfig:
    pipeline: str
    parallelism: int
    delivery: str
    bootstrap_overrides: list[str]
    client_kwargs: dict[str, Any]
    cache_dir: str
    work_dir: Path
    extra_sets: list[str]
    metrics: bool
    # Run the job on this standalone cluster (``freshrec cluster``) instead of a MiniCluster.
    cluster_sets: list[str] | None = None


class PipelineRun:
    """One pipeline (job or identity) on fresh topics: preload, throughput, latency phases."""

    def __init__(self, cfg: RunConfig, args: argparse.Namespace) -> None:
        from devstack.kafka_topics import create_topic
        from freshrec_common.settings import load_settings

        self.cfg, self.args = cfg, args
        tag = f"{cfg.pipeline}-p{cfg.parallelism}-{cfg.delivery[:2]}-{uuid.uuid4().hex[:6]}"
        self.tag = tag
        self.metrics_port = free_ports(1)[0] if cfg.metrics else 0
        self.dir = cfg.work_dir / tag
        self.dir.mkdir(parents=True)
        self.overrides = [
            *cfg.bootstrap_overrides,
            f"local.cache_dir={cfg.cache_dir}",
            f"topics.events=bench-{tag}.events",
            f"topics.dlq=bench-{tag}.dlq",
            f"topics.recommendations=bench-{tag}.recommendations",
            f"topics.item_embeddings=bench-{tag}.item-embeddings",
            f"job.group_id=bench-{tag}",
            f"job.checkpoint_dir={self.dir / 'checkpoints'}",
            "job.starting_offsets=earliest",
            f"job.metrics_port={self.metrics_port}",
            f"job.parallelism={cfg.parallelism}",
            f"job.delivery={cfg.delivery}",
            *cfg.extra_sets,
        ]
        self.settings = load_settings(overrides=self.overrides)
        t = self.settings.topics
        compact = {"cleanup.policy": "compact"}
        create_topic(self.settings, t.events, partitions=t.partitions)
        create_topic(self.settings, t.dlq, partitions=1)
        create_topic(self.settings, t.recommendations, partitions=t.partitions, configs=compact)
        create_topic(self.settings, t.item_embeddings, partitions=t.partitions, configs=compact)
        self.proc: subprocess.Popen[bytes] | None = None
        self.job_id: str | None = None  # on a cluster
        self.consumer: OutputConsumer | None = None
        self.producer: Any = None
        self.log_path = self.dir / "job.log"
        self.sent_per_user: dict[bytes, int] = defaultdict(int)  # interaction events sent
        self.result: dict[str, Any] = {
            "pipeline": cfg.pipeline, "parallelism": cfg.parallelism, "delivery": cfg.delivery,
            "runtime": "minicluster" if cfg.cluster_sets is None else "standalone cluster",
            "refresh_interval_ms": self.settings.job.refresh_interval_ms,
            "bundle_max_age_ms": self.settings.job.bundle_max_age_ms,
            "checkpoint_interval_ms": self.settings.job.checkpoint_interval_ms,
            "partitions": t.partitions,
        }

    # -- processes -------------------------------------------------------------------------
    def start(self) -> None:
        if self.cfg.cluster_sets is not None:
            self._submit_to_cluster()
            return
        if self.cfg.pipeline == "job":
            cmd = [sys.executable, "-m", "flink_jobs.recommender_job"]
        else:
            cmd = [sys.executable, "-c", "import sys; from bench import e2e_pipelines; "
                   f"sys.exit(e2e_pipelines.{self.cfg.pipeline}_main(sys.argv[1:]))"]
        cmd += [arg for o in self.overrides for arg in ("--set", o)]
        env = {**os.environ, **CHILD_ENV}
        self.proc = subprocess.Popen(cmd, stdout=self.log_path.open("ab"),
                                     stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env,
                                     start_new_session=True)

    def _submit_to_cluster(self) -> None:
        from devstack import flink_submit
        from freshrec_common.settings import load_settings

        self.cluster_settings = load_settings(overrides=[*self.overrides,
                                                         *self.cfg.cluster_sets])
        passthrough = [arg for o in self.overrides for arg in ("--set", o)]
        self.job_id = flink_submit.submit(self.cluster_settings, self.cfg.parallelism,
                                          passthrough=passthrough, log=say).job_id

    def alive(self) -> None:
        if self.job_id is not None:
            from devstack import flink_rest

            state = flink_rest.job_detail(self.cluster_settings, self.job_id)["state"]
            if state in ("FAILED", "CANCELED", "FINISHED"):
                raise RuntimeError(f"job {self.job_id} on the cluster is {state}")
            return
        if self.proc is not None and self.proc.poll() is not None:
            text = self.log_path.read_text("utf-8", "replace").splitlines()
            causes = [line for line in text if "Caused by" in line or "Error" in line]
            raise RuntimeError(f"{self.cfg.pipeline} exited with {self.proc.returncode}:\n"
                               + "\n".join(causes[-8:] + text[-30:]))

    def stop(self) -> None:
        if self.producer is not None:
            self.producer.close(timeout=5)
        if self.consumer is not None:
            self.consumer.stop()
        if self.proc is not None and self.proc.poll() is None:
            kill_tree(self.proc.pid, what=self.cfg.pipeline, log=say)
            self.proc.wait(timeout=30)
        if self.job_id is not None:
            from devstack import flink_submit

            flink_submit.cancel(self.cluster_settings, self.job_id)

    def _producer(self) -> Any:
        if self.producer is None:
            from kafka import KafkaProducer

            self.producer = KafkaProducer(**self.cfg.client_kwargs, acks="all", linger_ms=5,
                                          batch_size=64 * 1024)
        return self.producer

    # -- phase 1: throughput -------------------------------------------------------------
    def preload(self, encoded: list[tuple[bytes, bytes, bool]]) -> None:
        prod = self._producer()
        topic = self.settings.topics.events
        t0 = time.perf_counter()
        for key, value, interaction in encoded:
            prod.send(topic, key=key, value=value)
            if interaction:
                self.sent_per_user[key] += 1
        prod.flush(timeout=120)
        took = time.perf_counter() - t0
        say(f"{self.tag}: pre-loaded {len(encoded):,} events in {took:.1f}s "
            f"({len(encoded) / took:,.0f}/s)")

    def throughput(self, timeout_s: float) -> None:
        total = sum(self.sent_per_user.values())
        self.consumer = OutputConsumer(self.cfg.client_kwargs,
                                       self.settings.topics.recommendations)
        self.start()
        launched = time.monotonic()
        where = (f"job {self.job_id} on the cluster" if self.job_id
                 else f"pid {self.proc.pid}, log {self.log_path}")
        say(f"{self.tag}: started ({where}); "
            f"waiting for {total:,} interaction events to be reflected on the output")
        curve: list[tuple[float, int]] = []
        first_out = None
        last_print = 0.0
        metrics = None
        deadline = None
        while True:
            self.alive()
            now = time.monotonic()
            applied, n_rec, n_users, lag = self.consumer.ask("progress")
            curve.append((now, applied))
            if first_out is None and n_rec > 0:
                first_out = now
                deadline = now + timeout_s
                say(f"{self.tag}: first output {now - launched:.1f}s after launch")
            if (self.metrics_port and metrics is None and first_out is not None
                    and (applied >= total * 0.5 or now - first_out > 20)):
                metrics = scrape_metrics(self.metrics_port)
            if now - last_print >= 5:
                last_print = now
                say(f"{self.tag}:   {applied:>9,} / {total:,} reflected, {n_rec:,} lists "
                    f"({n_users:,} users), consumer lag {lag:,}")
            if applied >= total:
                break
            if deadline is None and now - launched > 180:
                raise RuntimeError(f"{self.tag}: no output 180s after launch")
            if deadline is not None and now > deadline:
                say(f"{self.tag}: throughput phase timed out at {applied:,}/{total:,}")
                break
            time.sleep(0.25)

        def cross(frac: float) -> float | None:
            target = total * frac
            for (t_a, a), (t_b, b) in itertools.pairwise(curve):
                if a < target <= b:
                    return t_a + (t_b - t_a) * (target - a) / (b - a)
            return None

        t10, t90 = cross(0.1), cross(0.9)
        done = curve[-1][1] >= total
        if t10 is not None and t90 is not None:
            rate = 0.8 * total / (t90 - t10)
            window = t90 - t10
        elif t10 is not None:
            t_last, a_last = curve[-1]
            rate = (a_last - total * 0.1) / max(t_last - t10, 1e-9)
            window = t_last - t10
        elif first_out is not None and curve[-1][0] > first_out:
            # Slow pipeline: not even 10% within the cap; slope since the first output.
            t_last, a_last = curve[-1]
            rate, window = a_last / (t_last - first_out), t_last - first_out
        else:
            rate, window = 0.0, 0.0
        drain = (curve[-1][0] - first_out) if (done and first_out) else None
        self.result["throughput"] = {
            "interaction_events": total,
            "events_per_s": round(rate, 1),
            "window_s": round(window, 2),
            "completed": done,
            "first_output_after_launch_s": round(first_out - launched, 1) if first_out else None,
            "drain_from_first_output_s": round(drain, 1) if drain else None,
            "metrics_at_50pct": metrics,
        }
        say(f"{self.tag}: THROUGHPUT {rate:,.0f} interaction events/s "
            f"(10%->90% of {total:,} in {window:.1f}s; all reflected: {done})")
        if metrics:
            print_metrics(metrics)

    # -- phase 2: latency at fixed offered load ------------------------------------------
    def latency(self, shop: Any, rate: float, warmup_s: float, measure_s: float) -> None:
        prod = self._producer()
        topic = self.settings.topics.events
        # Events are generated and encoded ahead, ts split out: the producer shares this
        # machine's two cores with the job (encoding at send time took ~6 % of a core at
        # 1,300/s).
        n_total = int(rate * (warmup_s + measure_s)) + 1
        evs = [_split_at_ts(ev) for ev in shop.events(n_total)]
        self.consumer.ask("record")
        sends: dict[bytes, list[tuple[int, float]]] = defaultdict(list)
        t_start = time.time()
        t_measure = t_start + warmup_s
        t_end = t_measure + measure_s
        sent = 0
        metrics = None
        last_print = time.monotonic()
        while sent < n_total:
            now = time.time()
            due = min(n_total, int((now - t_start) * rate) + 1)
            while sent < due:
                key, before_ts, after_ts, interaction = evs[sent]
                ts = time.time() * 1000.0
                prod.send(topic, key=key,
                          value=b"".join((before_ts, b"%d" % int(ts), after_ts)))
                if interaction:
                    self.sent_per_user[key] += 1
                    if t_measure <= ts / 1000.0:
                        sends[key].append((self.sent_per_user[key], ts))
                sent += 1
            if self.metrics_port and metrics is None and now > t_measure + measure_s / 2:
                metrics = scrape_metrics(self.metrics_port)
            if time.monotonic() - last_print > 5:
                last_print = time.monotonic()
                self.alive()
                applied, _, _, lag = self.consumer.ask("progress")
                say(f"{self.tag}:   rate {rate:,.0f}/s: sent {sent:,}, behind by "
                    f"{sum(self.sent_per_user.values()) - applied:,} events, consumer lag {lag:,}")
            time.sleep(0.002)
        prod.flush(timeout=60)
        t_sent = time.time()
        achieved = n_total / (t_sent - t_start)
        # Drain: wait until every event is reflected (bounded), then take the samples.
        total = sum(self.sent_per_user.values())

        def drained() -> bool:
            self.alive()
            return self.consumer.ask("progress")[0] >= total

        wait_until(drained, max(10.0, 3 * self.settings.job.checkpoint_interval_ms / 1000.0),
                   interval_s=0.25)
        time.sleep(0.5)
        samples = self.consumer.ask("take")
        lag_behind = total - self.consumer.ask("progress")[0]
        t_measure_ms, t_end_ms = t_measure * 1000.0, t_end * 1000.0
        list_lat = [c - ts for c, _k, _n, ts, _g in samples if t_measure_ms <= ts < t_end_ms]
        gen_lat = [c - g for c, _k, _n, ts, g in samples if t_measure_ms <= ts < t_end_ms]
        # Per second of event time: where the tail comes from (steady, or stalls).
        by_second: dict[int, list[tuple[float, float]]] = defaultdict(list)
        for c, _k, _n, ts, g in samples:
            if t_measure_ms <= ts < t_end_ms:
                by_second[int((ts - t_measure_ms) // 1000)].append((c - ts, g - ts))
        # Event latency: first list of the user whose events_applied covers the event.
        by_user: dict[bytes, list[tuple[float, int]]] = defaultdict(list)
        for c, k, n, _ts, _g in samples:
            by_user[k].append((c, n))
        ev_lat: list[float] = []
        unreflected = 0
        for key, evlist in sends.items():
            lists = sorted(by_user.get(key, []))
            i, best = 0, 0
            for ordinal, ts in evlist:  # ordinals increase, lists in consume order
                while i < len(lists) and best < ordinal:
                    best = max(best, lists[i][1])
                    c = lists[i][0]
                    i += 1
                if best >= ordinal:
                    ev_lat.append(c - ts)
                else:
                    unreflected += 1
        entry = {
            "target_rate": round(rate, 1),
            "achieved_rate": round(achieved, 1),
            "measure_s": measure_s,
            "list_latency_ms": percentiles(list_lat),
            "event_latency_ms": percentiles(ev_lat),
            "sink_latency_ms": percentiles(gen_lat),
            # [second, lists, list latency p50, max, time in the job (generated_at - ts) max]
            "list_latency_by_second": [
                [sec, len(v), round(sorted(a for a, _ in v)[len(v) // 2], 1),
                 round(max(a for a, _ in v), 1), round(max(b for _, b in v), 1)]
                for sec, v in sorted(by_second.items())],
            "unreflected_events": unreflected,
            "behind_after_drain": lag_behind,
            "metrics_mid_window": metrics,
        }
        self.result.setdefault("latency", []).append(entry)
        ll, el = entry["list_latency_ms"], entry["event_latency_ms"]
        say(f"{self.tag}: LATENCY at {rate:,.0f}/s (achieved {achieved:,.0f}/s): list p50/p95/p99 "
            f"{ll['p50']}/{ll['p95']}/{ll['p99']} ms (n={ll['n']:,}); event p50/p95/p99 "
            f"{el['p50']}/{el['p95']}/{el['p99']} ms (n={el['n']:,}, unreflected {unreflected})")
        if metrics:
            print_metrics(metrics)
