"""``freshrec setup``, ``freshrec run`` and ``freshrec demo``: the job on the local MiniCluster."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from freshrec import kafka_config
from freshrec.local_kafka import LocalKafkaError, broker_down, broker_status, broker_up, ensure_jars
from freshrec.processes import settings_args
from freshrec.settings import Settings


def setup(args: argparse.Namespace, settings: Settings) -> int:
    """Fetch and build everything the job needs, once (cached)."""
    from flink_jobs.glue import build_glue_jar, build_metrics_jar

    jars = ensure_jars(settings)
    flink_cache = Path(settings.local.cache_dir) / "flink"
    glue = build_glue_jar(jars.connector_jar, flink_cache)
    metrics = build_metrics_jar(flink_cache)
    print(f"setup: Kafka broker jars in {jars.kafka_libs}")
    print(f"setup: Flink jars {jars.connector_jar.name}, {glue.name}, {metrics.name}")
    return 0


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the job in this process on a local MiniCluster until Ctrl-C."""
    from flink_jobs.recommender_job import JOB_NAME, create_job

    if not _broker_reachable(settings):
        print(f"freshrec run: no Kafka broker answers at {settings.kafka.bootstrap_servers}; "
              "start the local one with `freshrec kafka up`", file=sys.stderr)
        return 1
    # SIGTERM ends the client with its cleanup, so the JVM it launched sees its stdin close.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    env = create_job(settings)
    print(f"freshrec run: job '{JOB_NAME}' on the local MiniCluster, parallelism "
          f"{settings.job.parallelism}, {settings.job.delivery}; reading "
          f"{settings.topics.events}, writing {settings.topics.recommendations}", flush=True)
    if settings.job.metrics_port > 0:
        print(f"freshrec run: Flink metrics at http://127.0.0.1:{settings.job.metrics_port}/metrics",
              flush=True)
    env.execute(JOB_NAME)
    return 0


def _broker_reachable(settings: Settings) -> bool:
    try:
        admin = kafka_config.admin_client(settings, request_timeout_ms=5000)
    except Exception:  # NoBrokersAvailable and connection errors
        return False
    admin.close()
    return True


def _produce_demo_traffic(settings: Settings, rate: float, stop: threading.Event) -> None:
    from freshrec.generator import generate_events
    from schemas.events import encode_event

    producer = kafka_config.producer(settings, acks="all", linger_ms=5)
    interval = 1.0 / rate
    start = time.perf_counter()
    events = generate_events(10_000_000, seed=settings.model.seed, n_users=500, n_items=2000,
                             n_categories=12, start_ts_ms=int(time.time() * 1000))
    for i, event in enumerate(events):
        if stop.is_set():
            break
        ahead = start + i * interval - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
        key = event.item_id if event.event_type == "item_upsert" else event.user_id
        producer.send(settings.topics.events, key=(key or "").encode(), value=encode_event(event))
    producer.flush()
    producer.close()


def demo(args: argparse.Namespace, settings: Settings) -> int:
    """Broker up, job started, generator traffic, live recommendations printed."""
    from freshrec.tail import format_record

    # SIGTERM (e.g. from a supervisor) stops the demo like Ctrl-C: through the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started_broker = not broker_status(settings).running
    try:
        broker_up(settings)
    except LocalKafkaError as exc:
        print(f"freshrec demo: {exc}", file=sys.stderr)
        return 1
    log_path = Path(settings.local.state_dir).parent / "job.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"demo: starting the Flink job (MiniCluster); its log is {log_path}", flush=True)
    with log_path.open("ab") as log:
        job = subprocess.Popen(
            [sys.executable, "-m", "freshrec.cli", *settings_args(args), "run"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    stop = threading.Event()
    producer = threading.Thread(
        target=_produce_demo_traffic, args=(settings, args.rate, stop), daemon=True)
    producer.start()
    print(f"demo: sending generated storefront events at {args.rate:.0f}/s to "
          f"{settings.topics.events}", flush=True)
    if settings.job.metrics_port > 0:
        print(f"demo: Flink job metrics at http://127.0.0.1:{settings.job.metrics_port}/metrics",
              flush=True)
    print("demo: live recommendations follow (Ctrl-C stops everything)\n", flush=True)
    consumer: Any = kafka_config.consumer(
        settings, settings.topics.recommendations, isolation_level="read_committed",
        auto_offset_reset="latest", consumer_timeout_ms=1000,
    )
    shown = 0
    deadline = time.monotonic() + args.seconds if args.seconds else None
    try:
        while deadline is None or time.monotonic() < deadline:
            if job.poll() is not None:
                print(f"demo: the job exited with {job.returncode}; see {log_path}",
                      file=sys.stderr)
                return 1
            for msg in consumer:
                shown += 1
                if shown % args.every == 1 or args.every == 1:
                    print(format_record(msg.key, msg.value), flush=True)
                if deadline is not None and time.monotonic() >= deadline:
                    break
    except KeyboardInterrupt:
        print("\ndemo: stopping", flush=True)
    finally:
        stop.set()
        consumer.close()
        _stop_job(job)
        producer.join(timeout=10)
        if started_broker:
            broker_down(settings)
    print(f"demo: {shown} recommendation lists received")
    return 0 if shown else 1


def _stop_job(job: subprocess.Popen[bytes]) -> None:
    """Stop the job's whole process group: the Python client and the JVM it launched."""
    if job.poll() is None:
        os.killpg(job.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            job.wait(timeout=20)
    # The JVM may outlive the Python client while its MiniCluster shuts down.
    deadline = time.monotonic() + 10
    while _group_alive(job.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_alive(job.pid):
        os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    print("demo: job stopped", flush=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("setup", help="fetch the Kafka and Flink jars and build the glue")
    p.set_defaults(func=setup)
    p = subparsers.add_parser("run", help="run the job on the local MiniCluster (blocking)")
    p.set_defaults(func=run)
    p = subparsers.add_parser(
        "demo", help="local broker + job + generated traffic, printing live recommendations")
    p.add_argument("--rate", type=float, default=200.0, help="events/s of demo traffic")
    p.add_argument("--seconds", type=float, default=0.0,
                   help="stop after this many seconds (default: run until Ctrl-C)")
    p.add_argument("--every", type=int, default=10, help="print every Nth list received")
    p.set_defaults(func=demo)
