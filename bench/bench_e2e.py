"""End-to-end benchmark: Kafka -> Flink -> Kafka, the freshrec job next to an identity job
and a Java-only passthrough.

The pipelines run as child processes (a Flink MiniCluster each, thread mode) against a real
broker, on fresh uniquely named topics, one after the other, in the same run:

* ``job``: the real freshrec job (``python -m flink_jobs.recommender_job --set ...``);
* ``identity``: the same Kafka source, a per-record parse (with its DLQ sink), ``key_by(user)``
  and Kafka sink, but the model is a trivial keyed operator that emits one recommendation
  v1 record per event (its only state is a per-user counter). Built in this file and run
  with ``python -c "from bench import bench_e2e; ..." --set ...``: the per-record data flow's
  floor (one Python call per record for parse and for the keyed model);
* ``passthrough``: the same Kafka source and sink with a Java map between them and no Python
  at all: the ceiling of this machine (``passthrough_main``).

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
import dataclasses
import itertools
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

GOAL_RATE = 20_000.0
GOAL_P99_MS = 250.0
GOAL_RATIO = 0.5
PIPELINES = ("job", "identity", "passthrough")


# ============================================================================ identity job
# Runs in the child process, started as ``from bench import bench_e2e`` so that the UDFs below are
# pickled by reference (not by value from ``__main__``) and imported by Flink's embedded
# interpreter like the job's own operators.

from pyflink.common import Row, Types  # noqa: E402
from pyflink.datastream import KeyedProcessFunction, OutputTag, ProcessFunction  # noqa: E402
from pyflink.datastream.state import ValueStateDescriptor  # noqa: E402

from bench.common import CHILD_ENV, REPO_ROOT, machine, say, scrape  # noqa: E402

# Imported here, not lazily: whichever Flink task opens first then loads torch/river/scipy.
# A pybind11 extension (scipy.spatial) first imported from another task's thread deadlocks
# in PyGILState_Ensure under pemja (seen when only the parse task imported them).
from devstack.processes import free_ports  # noqa: E402
from flink_jobs.kafka_io import KEYED_BYTES_TYPE  # noqa: E402
from flink_jobs.user_side import now_ms  # noqa: E402
from schemas.dlq import DeadLetter, encode_dead_letter  # noqa: E402
from schemas.event_fields import DecodeError  # noqa: E402
from schemas.events import decode_event  # noqa: E402
from schemas.recommendation import Recommendation, ScoredItem  # noqa: E402


class IdentityModel(KeyedProcessFunction):
    """One recommendation v1 list per event: the event's own item, seq = per-user count."""

    def open(self, runtime_context: Any) -> None:
        self.count = runtime_context.get_state(ValueStateDescriptor("count", Types.LONG()))

    def process_element(self, msg: Any, ctx: Any) -> Any:
        event = _event_of(msg)
        n = (self.count.value() or 0) + 1
        self.count.update(n)
        rec = Recommendation(
            user_id=event.user_id, items=(ScoredItem(event.item_id or "", 1.0, "identity"),),
            model_version="identity", generated_at=int(time.time() * 1000),
            last_event_ts=event.ts_ms, last_event_id=event.event_id, seq=n, events_applied=n,
        )
        yield Row(event.user_id.encode(), rec.to_bytes())


DLQ_TAG = OutputTag("dead-letters", KEYED_BYTES_TYPE)


class IdentityParse(ProcessFunction):
    """Per-record decode and validation (the per-record job's parse step): valid user events
    leave as ``(event, kafka_timestamp)``, invalid ones go to the DLQ side output."""

    def __init__(self, max_payload_bytes: int, max_id_length: int, topic: str) -> None:
        self.max_payload_bytes, self.max_id_length = max_payload_bytes, max_id_length
        self.topic = topic

    def process_element(self, row: Any, ctx: Any) -> Any:
        result = decode_event(row[5], self.max_payload_bytes, self.max_id_length)
        if isinstance(result, DecodeError):
            dead = DeadLetter.build(row[5], row[4], result.code, result.field, result.message,
                                    self.topic, row[1], row[2], now_ms())
            yield DLQ_TAG, Row(row[4], encode_dead_letter(dead))
        elif result.user_id is not None:
            yield result, row[3]


def _event_of(msg: Any) -> Any:
    return msg[0]


def user_key(msg: Any) -> str:
    return _event_of(msg).user_id


def _pipeline_source(argv: list[str], prog: str) -> tuple[Any, Any, Any]:
    """Settings from ``--set`` arguments, an environment with the job's jars, and the job's
    raw Kafka source on it: what the comparison pipelines share with the job."""
    from pyflink.common import WatermarkStrategy

    from flink_jobs import kafka_io
    from flink_jobs.environment import make_environment
    from flink_jobs.recommender_job import job_jars
    from freshrec_common.settings import load_settings
    from freshrec_common.settings_args import add_settings_arguments

    parser = argparse.ArgumentParser(prog=prog)
    add_settings_arguments(parser)
    args = parser.parse_args(argv)
    settings = load_settings(args.config, overrides=args.overrides)
    job = settings.job
    env = make_environment(settings, job_jars(settings))
    raw = env.from_source(
        kafka_io.raw_source(settings, settings.topics.events, job.group_id,
                            job.starting_offsets),
        WatermarkStrategy.no_watermarks(), "kafka-events", kafka_io.RAW_RECORD_TYPE,
    ).uid("source-events")
    return settings, env, raw


def identity_main(argv: list[str]) -> int:
    """The identity pipeline: same source, parse, key_by and sinks; a trivial model."""
    from flink_jobs import kafka_io

    settings, env, raw = _pipeline_source(argv, "bench_e2e identity-job")
    job, topics = settings.job, settings.topics
    # The UDFs above are pickled by reference to this module: ship it to the workers.
    env.add_python_file(str(Path(__file__).resolve()))
    parsed = (raw.process(IdentityParse(job.max_payload_bytes, job.max_id_length, topics.events))
              .name("parse-validate").uid("parse-validate"))
    parsed.get_side_output(DLQ_TAG).sink_to(
        kafka_io.keyed_bytes_sink(settings, topics.dlq, "dlq")).name("sink-dlq").uid("sink-dlq")
    (parsed.key_by(user_key, Types.STRING())
     .process(IdentityModel(), kafka_io.KEYED_BYTES_TYPE).name("identity-model")
     .uid("identity-model")
     .sink_to(kafka_io.keyed_bytes_sink(settings, topics.recommendations, "recs"))
     .name("sink-recommendations").uid("sink-recommendations"))
    env.execute("freshrec-identity")
    return 0


def passthrough_main(argv: list[str]) -> int:
    """The Java-only ceiling: Kafka source -> Row(key, value) (Java) -> Kafka sink."""
    from pyflink.datastream import DataStream
    from pyflink.java_gateway import get_gateway

    from flink_jobs import kafka_io

    settings, env, raw = _pipeline_source(argv, "bench_e2e passthrough-job")
    keyed = DataStream(raw._j_data_stream.map(
        get_gateway().jvm.io.freshrec.flink.RawToKeyedBytes())).name("to-keyed-bytes")
    (keyed.sink_to(kafka_io.keyed_bytes_sink(settings, settings.topics.recommendations, "recs"))
     .name("sink-recommendations").uid("sink-recommendations"))
    env.execute("freshrec-passthrough")
    return 0


# ============================================================================ output consumer
# A separate process so that the producer's pacing and the consumer's stamps do not share
# one GIL. It reads the recommendations topic from the start, forever, and answers commands.

_TAIL_INT = {
    name: re.compile(rb'"' + name.encode() + rb'":(-?\d+)')
    for name in ("last_event_ts", "events_applied", "generated_at", "ts")
}


def _field(value: bytes, name: str) -> int:
    # The fields sit after the items; search the tail only (ids are <= 128 characters).
    m = _TAIL_INT[name].search(value, max(0, len(value) - 700))
    return int(m.group(1)) if m else -1


def consumer_main(kwargs: dict[str, Any], topic: str, conn: Any) -> None:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        **kwargs, auto_offset_reset="earliest", enable_auto_commit=False,
        isolation_level="read_committed", fetch_max_wait_ms=20,
        max_poll_records=5000, max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    parts = None
    while parts is None:
        found = consumer.partitions_for_topic(topic)
        if found:
            parts = [TopicPartition(topic, p) for p in sorted(found)]
        else:
            time.sleep(0.2)
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    applied: dict[bytes, int] = {}
    total = 0
    n_records = 0
    recording = False
    samples: list[tuple[float, bytes, int, int, int]] = []
    last_lag_check, lag = 0.0, 0
    while True:
        batches = consumer.poll(timeout_ms=50)
        now = time.time() * 1000.0
        for records in batches.values():
            for r in records:
                n_records += 1
                if r.value is None or r.key is None:
                    continue
                n = _field(r.value, "events_applied")
                prev = applied.get(r.key, 0)
                raw_event = n < 0  # the passthrough copies events: one each
                if raw_event:
                    n = prev + 1
                if n > prev:
                    applied[r.key] = n
                    total += n - prev
                if recording:
                    samples.append((now, r.key, n, _field(
                        r.value, "ts" if raw_event else "last_event_ts"),
                        -1 if raw_event else _field(r.value, "generated_at")))
        if now - last_lag_check > 1000:
            last_lag_check = now
            ends = consumer.end_offsets(parts)
            lag = sum(max(0, ends[tp] - consumer.position(tp)) for tp in parts)
        while conn.poll():
            cmd = conn.recv()
            if cmd == "progress":
                conn.send((total, n_records, len(applied), lag))
            elif cmd == "record":
                recording, samples = True, []
                conn.send(True)
            elif cmd == "take":
                conn.send(samples)
                recording, samples = False, []
            elif cmd == "applied":
                conn.send(dict(applied))
            elif cmd == "stop":
                consumer.close()
                conn.send(True)
                return


class OutputConsumer:
    def __init__(self, kwargs: dict[str, Any], topic: str) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=consumer_main, args=(kwargs, topic, child), daemon=True)
        self.proc.start()

    def ask(self, cmd: str, timeout: float = 60.0) -> Any:
        self.conn.send(cmd)
        if not self.conn.poll(timeout):
            raise RuntimeError(f"output consumer did not answer {cmd!r} in {timeout}s")
        return self.conn.recv()

    def stop(self) -> None:
        try:
            if self.proc.is_alive():
                self.ask("stop", timeout=10)
        except Exception:
            pass
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()


# ============================================================================ helpers

def percentiles(values: list[float]) -> dict[str, float | None]:
    import numpy as np

    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    a = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"n": int(a.size), "p50": round(float(p50), 1), "p95": round(float(p95), 1),
            "p99": round(float(p99), 1), "max": round(float(a.max()), 1)}


def scrape_metrics(port: int) -> dict[str, Any]:
    """Busy/back-pressured time per task and records/s per operator from the reporter."""
    families = scrape(port)
    if not families:
        return {"error": f"no metrics on port {port}"}
    tasks: dict[str, dict[str, float]] = defaultdict(dict)
    ops: dict[str, float] = defaultdict(float)
    for s in (s for family in families for s in family.samples):
        name, labels, v = s.name, s.labels, s.value
        short = name.rsplit("_", 1)[-1]
        if name.startswith("flink_taskmanager_job_task_") and "operator" not in name and short in (
                "busyTimeMsPerSecond", "backPressuredTimeMsPerSecond", "idleTimeMsPerSecond"):
            key = f"{labels.get('task_name', '?')}#{labels.get('subtask_index', '?')}"
            tasks[key][short] = v
        elif name == "flink_taskmanager_job_task_operator_numRecordsInPerSecond":
            ops[f"{labels.get('operator_name', '?')}#{labels.get('subtask_index', '?')}"] += v
    return {"tasks": {k: tasks[k] for k in sorted(tasks)},
            "operator_records_in_per_s": {k: round(v, 1) for k, v in sorted(ops.items())}}


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


# ============================================================================ one pipeline run

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
            cmd = [sys.executable, "-c", "import sys; from bench import bench_e2e; "
                   f"sys.exit(bench_e2e.{self.cfg.pipeline}_main(sys.argv[1:]))"]
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
            os.killpg(self.proc.pid, signal.SIGKILL)
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
        from schemas.events import encode_event

        prod = self._producer()
        topic = self.settings.topics.events
        # Events are generated ahead (only ts is set at send time).
        n_total = int(rate * (warmup_s + measure_s)) + 1
        evs = list(shop.events(n_total))
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
                ev = evs[sent]
                ts = time.time() * 1000.0
                ev = dataclasses.replace(ev, ts_ms=int(ts))
                interaction = ev.event_type != "item_upsert"
                key = (ev.user_id if interaction else ev.item_id or "").encode()
                prod.send(topic, key=key, value=encode_event(ev))
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
        drain_deadline = time.monotonic() + max(10.0, 3 * self.settings.job.checkpoint_interval_ms
                                                / 1000.0)
        while time.monotonic() < drain_deadline:
            self.alive()
            applied = self.consumer.ask("progress")[0]
            if applied >= total:
                break
            time.sleep(0.25)
        time.sleep(0.5)
        samples = self.consumer.ask("take")
        lag_behind = total - self.consumer.ask("progress")[0]
        t_measure_ms, t_end_ms = t_measure * 1000.0, t_end * 1000.0
        list_lat = [c - ts for c, _k, _n, ts, _g in samples if t_measure_ms <= ts < t_end_ms]
        gen_lat = [c - g for c, _k, _n, ts, g in samples if t_measure_ms <= ts < t_end_ms]
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


# ============================================================================ driver

def make_events(args: argparse.Namespace) -> tuple[Any, list[tuple[bytes, bytes, bool]]]:
    """A fresh storefront (same seed every call) and its encoded preload."""
    from freshrec.generator import Storefront
    from schemas.events import Event, encode_event

    n = args.events
    # Event times end at "now", so the later live phases continue the same clock.
    start = int(time.time() * 1000) - n
    shop = Storefront(seed=args.seed, n_users=args.users, n_items=args.items, mean_gap_ms=1.0,
                      start_ts_ms=start)
    out: list[tuple[bytes, bytes, bool]] = []
    t = shop.truth
    for item in sorted(t.item_category, key=lambda s: int(s[1:])):  # the catalogue block
        shop._announced.add(item)  # no second announcement inside the stream
        ev = Event(f"cat-{item}", "item_upsert", start, item_id=item, price=t.item_price[item],
                   category=t.item_category[item], brand=t.item_brand[item],
                   title=f"{t.item_brand[item]} {t.item_category[item]} item {item}",
                   available=True)
        out.append((item.encode(), encode_event(ev), False))
    for ev in shop.events(n):
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


def fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and v >= 100:
        return f"{v:,.0f}{unit}"
    return f"{v}{unit}"


def table(results: list[dict[str, Any]]) -> str:
    rows = ["| pipeline | p | delivery | max events/s | offered (achieved) /s | list latency "
            "p50 / p95 / p99 ms | event latency p50 / p95 / p99 ms |",
            "|---|---|---|---:|---:|---|---|"]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['pipeline']} | {r['parallelism']} | {r['delivery']} | failed: "
                        f"{r['error'].splitlines()[0][:60]} | - | - | - |")
            continue
        tp = r["throughput"]["events_per_s"]
        lat = [e for e in r.get("latency", []) if "skipped" not in e] or [None]
        for i, e in enumerate(lat):
            runtime = " (cluster)" if r.get("runtime") == "standalone cluster" else ""
            head = (f"| {r['pipeline']}{runtime} | {r['parallelism']} | {r['delivery']} | "
                    f"{fmt(tp) if i == 0 else ''} |")
            if e is None:
                rows.append(head + " - | - | - |")
                continue
            ll, el = e["list_latency_ms"], e["event_latency_ms"]
            rows.append(head + f" {fmt(e['target_rate'])} ({fmt(e['achieved_rate'])}) | "
                        f"{fmt(ll['p50'])} / {fmt(ll['p95'])} / {fmt(ll['p99'])} | "
                        f"{fmt(el['p50'])} / {fmt(el['p95'])} / {fmt(el['p99'])} |")
    return "\n".join(rows)


def verdicts(results: list[dict[str, Any]]) -> list[str]:
    out = []
    by = {(r["pipeline"], r["parallelism"], r["delivery"]): r for r in results}
    for (pipe, p, d), r in by.items():
        if pipe != "job" or "error" in r:
            continue
        tp = r["throughput"]["events_per_s"]
        line = f"job p={p} {d}: {tp:,.0f} events/s (goal >= {GOAL_RATE:,.0f}: " \
               f"{'met' if tp >= GOAL_RATE else 'NOT met'})"
        ident = by.get(("identity", p, d))
        if ident and "error" not in ident:
            ratio = tp / max(ident["throughput"]["events_per_s"], 1e-9)
            line += f"; {ratio:.0%} of identity (goal >= {GOAL_RATIO:.0%}: " \
                    f"{'met' if ratio >= GOAL_RATIO else 'NOT met'})"
        ceiling = by.get(("passthrough", p, d))
        if ceiling and "error" not in ceiling:
            share = tp / max(ceiling["throughput"]["events_per_s"], 1e-9)
            line += f"; {share:.0%} of the Java-only passthrough"
        lat = [e for e in r.get("latency", []) if "skipped" not in e]
        if lat:
            half = min(lat, key=lambda e: abs(e["target_rate"] - tp / 2))
            p99 = half["list_latency_ms"]["p99"]
            ep99 = half["event_latency_ms"]["p99"]
            if p99 is not None:
                line += (f"; p99 at {half['target_rate']:,.0f}/s: list {p99:.0f} ms, event "
                         f"{ep99 if ep99 is None else round(ep99)} ms (goal <= {GOAL_P99_MS:.0f}: "
                         f"{'met' if p99 <= GOAL_P99_MS and d == 'at-least-once' else 'NOT met'}"
                         f"{'' if d == 'at-least-once' else ', goal is for at-least-once'})")
        out.append(line)
    return out


def plot(results: list[dict[str, Any]], path: Path) -> bool:
    """Max throughput per configuration and list latency p99 against offered load."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [r for r in results if "error" not in r]
    if not ok:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    short = {"at-least-once": "ALO", "exactly-once": "EO"}
    labels = [f"{r['pipeline']}\np={r['parallelism']} {short[r['delivery']]}" for r in ok]
    ax1.bar(labels, [r["throughput"]["events_per_s"] for r in ok],
            color=["tab:blue" if r["pipeline"] == "job" else "tab:gray" for r in ok])
    ax1.axhline(GOAL_RATE, color="tab:red", linestyle="--", label="goal 20k/s")
    ax1.set_yscale("log")
    ax1.set_ylabel("max sustained events/s (log)")
    ax1.legend()
    for r in ok:
        lat = [e for e in r.get("latency", []) if "skipped" not in e
               and e["list_latency_ms"]["p99"] is not None]
        if lat:
            ax2.plot([e["achieved_rate"] for e in lat],
                     [e["list_latency_ms"]["p99"] for e in lat], marker="o",
                     label=f"{r['pipeline']} p={r['parallelism']} {r['delivery']}")
    ax2.axhline(GOAL_P99_MS, color="tab:red", linestyle="--", label="goal p99 250 ms")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("offered events/s (achieved)")
    ax2.set_ylabel("list latency p99 (ms)")
    ax2.legend(fontsize=7)
    fig.suptitle("freshrec end to end: Kafka -> Flink -> Kafka")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_identity-job":
        return identity_main(argv[1:])
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
    ap.add_argument("--throughput-timeout", type=float, default=60.0,
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
