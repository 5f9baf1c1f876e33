"""Recovery benchmark: a (re)start whose item changelog holds N records reaches fresh lists.

The job reads the compacted item-embedding changelog from the start on every (re)start to
rebuild its replicas. This script starts a broker (single node, temp dir), writes N
changelog records over ``--items`` items (item-embedding v1, as item-update publishes them)
into the changelog topic created with the job's compacted-topic settings, starts the job
(Flink MiniCluster, thread mode), and sends one view per user every second; it reports the
time from the job's start to the first list that reflects one of those views and to the
moment the replica holds the whole catalogue (``freshrec_job_items_in_replica``), and how
many records a reader of the changelog got at the start (the broker compacts it meanwhile).

With ``--restore`` the job is then stopped with a savepoint (``freshrec run --savepoint``,
SIGTERM) and started again from it: a restore reads each item's newest record from the
changelog (``flink_jobs.changelog_reader``; the replica is no Flink state) before its first
element, and the script reports the restarted job's time to its first fresh list too.

Usage::

    .venv/bin/python -m bench.bench_recovery                 # 500k records, 2,600 items
    .venv/bin/python -m bench.bench_recovery --records 100000
    .venv/bin/python -m bench.bench_recovery --uncompacted --restore

Goal: fresh lists within 30 s with 500k changelog records.
Prints the figures and writes ``bench/results/recovery.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, RESULTS_DIR, say, scrape
from devstack.kafka_broker import broker_down, broker_up
from devstack.kafka_topics import COMPACTED_TOPIC_CONFIGS, create_topic
from devstack.processes import free_ports, kill_tree
from freshrec_common import kafka_config
from freshrec_common.settings import load_settings
from schemas.events import Event, encode_event
from schemas.item_embedding import ItemEmbedding
from schemas.recommendation import Recommendation

# The broker's own segment roll and cleaner lag: nothing is compacted within minutes.
KAFKA_DEFAULT_ROLL = {"segment.ms": "604800000", "segment.bytes": "1073741824",
                      "max.compaction.lag.ms": "9223372036854775807",
                      "min.cleanable.dirty.ratio": "0.5"}


def fill_changelog(settings, topic: str, records: int, items: int, dim: int) -> float:
    """Write ``records`` changelog records round-robin over ``items`` items; seconds taken."""
    import numpy as np

    producer = kafka_config.producer(settings, acks=1, linger_ms=20, batch_size=512 * 1024)
    rng = np.random.default_rng(0)
    t0 = time.monotonic()
    base = 1_760_000_000_000
    for n in range(records):
        k = n % items
        emb = ItemEmbedding(
            item_id=f"item-{k}", vector=tuple(rng.standard_normal(dim).astype(np.float32)
                                              .tolist()),
            bias=0.0, trend=-1.0, n_events=1 + n // items, updated_at=base + n, acc=0.5,
            category=f"cat-{k % 20}")
        producer.send(topic, key=emb.item_id.encode(), value=emb.to_bytes())
        if n and n % 100_000 == 0:
            say(f"  {n:,} changelog records written")
    producer.flush(timeout=120)
    producer.close()
    return time.monotonic() - t0


def count_records(settings, topic: str) -> int:
    """Records a reader of ``topic`` from the start gets now (after any compaction)."""
    from kafka import TopicPartition

    consumer = kafka_config.consumer(settings, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        n = 0
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            n += sum(len(b) for b in consumer.poll(timeout_ms=500, max_records=50_000).values())
        return n
    finally:
        consumer.close()


def replica_items(port: int) -> float:
    """``freshrec_job_items_in_replica`` from the job's Prometheus reporter (0 if absent)."""
    for family in scrape(port, timeout_s=2):
        if family.name.endswith("freshrec_job_items_in_replica"):
            return max((s.value for s in family.samples), default=0.0)
    return 0.0


GOAL_S = 30


def verdict(seconds: float | None) -> str:
    return "met" if seconds is not None and seconds <= GOAL_S else "NOT met"


def until_fresh(job: subprocess.Popen, producer: Any, consumer: Any, settings: Any,
                args: argparse.Namespace, metrics: int, log: Path,
                result: dict[str, object]) -> tuple[float | None, float | None]:
    """Send one view per user every second until a list reflects a view sent since ``job``
    started and the replica holds the whole catalogue; seconds from the start to each."""
    topics = settings.topics
    t_start = time.monotonic()
    start_ms = int(time.time() * 1000)
    fresh_at = full_at = None
    n = 0
    while (fresh_at is None or full_at is None) and time.monotonic() - t_start < args.timeout:
        if full_at is None and replica_items(metrics) >= args.items:
            full_at = time.monotonic() - t_start
        if job.poll() is not None:
            raise RuntimeError(f"the job exited early; log in {log}")
        now_ms = int(time.time() * 1000)
        for u in range(args.users):
            ev = Event(f"v{now_ms}-{u}", "view", now_ms, user_id=f"user-{u}",
                       item_id=f"item-{(n + u) % args.items}")
            producer.send(topics.events, key=ev.user_id.encode(), value=encode_event(ev))
        producer.flush()
        n += 1
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                for rec in batch:
                    if rec.value is None or fresh_at is not None:
                        continue
                    listed = Recommendation.from_json(rec.value)
                    if listed.last_event_ts >= start_ms:
                        fresh_at = time.monotonic() - t_start
                        result["first_list_items"] = len(listed.items)
    return fresh_at, full_at


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=500_000)
    ap.add_argument("--items", type=int, default=2_600)
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--uncompacted", action="store_true",
                    help="the broker's default segment roll: nothing is compacted before the "
                         "start, so the job reads back every record")
    ap.add_argument("--restore", action="store_true",
                    help="then stop the job with a savepoint and time its restore from it")
    ap.add_argument("--json", default=str(RESULTS_DIR / "recovery.json"))
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="freshrec-bench-recovery-"))
    cache_dir = os.environ.get("FRESHREC_LOCAL_CACHE_DIR", str(REPO_ROOT / ".cache"))
    port, cport, metrics = free_ports(3)
    overrides = [
        f"local.port={port}", f"local.controller_port={cport}", "local.host=127.0.0.1",
        f"local.state_dir={work / 'kafka'}", f"local.cache_dir={cache_dir}",
        f"kafka.bootstrap_servers=127.0.0.1:{port}", "kafka.security_protocol=PLAINTEXT",
        "topics.events=rec.events", "topics.dlq=rec.dlq",
        "topics.recommendations=rec.recommendations",
        "topics.item_embeddings=rec.item-embeddings", "job.group_id=rec",
        f"job.checkpoint_dir={work / 'checkpoints'}", "job.starting_offsets=latest",
        f"job.savepoint_dir={work / 'savepoints'}",
        f"job.metrics_port={metrics}",
    ]
    settings = load_settings(overrides=overrides)
    topics = settings.topics
    job = None
    result: dict[str, object] = {"records": args.records, "items": args.items,
                                 "compacted_topic_settings": not args.uncompacted}
    try:
        broker_up(settings, log=say)
        for name in (topics.events, topics.dlq):
            create_topic(settings, name, partitions=topics.partitions)
        for name in (topics.recommendations, topics.item_embeddings):
            create_topic(settings, name, partitions=topics.partitions,
                         configs=dict(COMPACTED_TOPIC_CONFIGS))
        if args.uncompacted:
            from kafka.admin import ConfigResource, ConfigResourceType

            admin = kafka_config.admin_client(settings)
            admin.alter_configs([ConfigResource(
                ConfigResourceType.TOPIC, topics.item_embeddings,
                configs={**COMPACTED_TOPIC_CONFIGS, **KAFKA_DEFAULT_ROLL})])
            admin.close()
        say(f"writing {args.records:,} changelog records over {args.items:,} items")
        result["fill_s"] = round(fill_changelog(settings, topics.item_embeddings, args.records,
                                                args.items, settings.model.dim), 1)
        result["records_at_start"] = count_records(settings, topics.item_embeddings)
        say(f"{result['records_at_start']:,} changelog records readable at the job's start")
        sets = [a for o in overrides for a in ("--set", o)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLINK_LOG_DIR": str(work / "logs")}
        producer = kafka_config.producer(settings, acks="all", linger_ms=5)
        consumer = kafka_config.consumer(settings, topics.recommendations,
                                         auto_offset_reset="earliest",
                                         isolation_level="read_committed")
        run = [sys.executable, "-m", "freshrec.cli", *sets, "run"]
        job = subprocess.Popen([*run, *(["--savepoint"] if args.restore else [])],
                               cwd=REPO_ROOT, env=env, start_new_session=True,
                               stdout=(work / "job.log").open("wb"), stderr=subprocess.STDOUT)
        say("job started; sending one view per user every second")
        fresh_at, full_at = until_fresh(job, producer, consumer, settings, args, metrics,
                                        work / "job.log", result)
        result["fresh_list_after_start_s"] = None if fresh_at is None else round(fresh_at, 1)
        result["whole_catalogue_in_replica_s"] = None if full_at is None else round(full_at, 1)
        result["goal_s"] = GOAL_S
        say(f"first fresh list {result['fresh_list_after_start_s']} s after the job's start, "
            f"whole catalogue in the replica after {result['whole_catalogue_in_replica_s']} s "
            f"({args.records:,} changelog records written; goal <= {GOAL_S} s: "
            f"{verdict(fresh_at)})")
        if args.restore and fresh_at is not None:
            say("stopping the job with a savepoint")
            job.send_signal(signal.SIGTERM)
            job.wait(timeout=120)
            found = re.search(r"stopped with savepoint (\S+)",
                              (work / "job.log").read_text("utf-8", "replace"))
            if found is None:
                raise RuntimeError(f"no savepoint; log in {work / 'job.log'}")
            say(f"restarting from {found.group(1)}")
            job = subprocess.Popen([*run[:-1], "--set", f"job.restore_from={found.group(1)}",
                                    "run"], cwd=REPO_ROOT, env=env, start_new_session=True,
                                   stdout=(work / "restored.log").open("wb"),
                                   stderr=subprocess.STDOUT)
            fresh_at, full_at = until_fresh(job, producer, consumer, settings, args, metrics,
                                            work / "restored.log", result)
            result["restore_fresh_list_s"] = None if fresh_at is None else round(fresh_at, 1)
            result["restore_whole_catalogue_s"] = (None if full_at is None
                                                   else round(full_at, 1))
            refilled = [line for path in sorted((work / "logs").glob("*.log"))
                        for line in path.read_text("utf-8", "replace").splitlines()
                        if "replica refilled" in line]
            result["restore_refill"] = refilled[-1].split("replica refilled", 1)[1].strip() \
                if refilled else None
            say(f"restored from the savepoint: first fresh list {result['restore_fresh_list_s']} "
                f"s after the restart (goal <= {GOAL_S} s: {verdict(fresh_at)}), the replica "
                f"{result['restore_refill']}")
    finally:
        if job is not None and job.poll() is None:
            kill_tree(job.pid, what="job", log=say)
            job.wait(timeout=30)
        broker_down(settings, log=say)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
