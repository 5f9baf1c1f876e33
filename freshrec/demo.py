"""``freshrec demo``: the local broker, the job (``freshrec run`` in a child process),
generated storefront traffic, and the live recommendation lists printed; a stop signal stops
it all within ``job.stop_timeout_s``."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from devstack.kafka_broker import broker_down, broker_status, broker_up
from devstack.prerequisites import LocalKafkaError
from devstack.processes import process_tree, say, stop_processes
from freshrec.signals import EXIT_FORCED, STOP, exit_code
from freshrec_common import kafka_config
from freshrec_common.preexec import die_with_parent
from freshrec_common.settings import Settings
from freshrec_common.settings_args import settings_args


def _produce_demo_traffic(settings: Settings, rate: float, stop: threading.Event) -> None:
    from freshrec.generator import generate_events, new_run_id
    from schemas.events import encode_event

    producer = kafka_config.producer(settings, acks="all", linger_ms=5)
    interval = 1.0 / rate
    start = time.perf_counter()
    events = generate_events(10_000_000, seed=settings.model.seed, n_users=500, n_items=2000,
                             n_categories=12, start_ts_ms=int(time.time() * 1000),
                             run_id=new_run_id())
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

    bound = settings.job.stop_timeout_s
    started_broker = not broker_status(settings).running
    try:
        broker_up(settings, bound_to_caller=started_broker)
    except LocalKafkaError as exc:
        print(f"freshrec demo: {exc}", file=sys.stderr)
        return 1
    log_path = Path(settings.local.state_dir).parent / "job.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"demo: starting the Flink job (MiniCluster); its log is {log_path}", flush=True)
    # The job gets most of the bound; the rest is for stopping the broker.
    job_bound = round(bound * 0.7, 1)
    with log_path.open("ab") as log:
        # Its own session (the terminal's Ctrl-C reaches only us, and we stop it in order),
        # and SIGTERM from the kernel if we die without stopping it.
        job = subprocess.Popen(
            [sys.executable, "-m", "freshrec.cli", *settings_args(args),
             "--set", f"job.stop_timeout_s={job_bound}", "run"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
    stop = threading.Event()
    producer = threading.Thread(
        target=_produce_demo_traffic, args=(settings, args.rate, stop), daemon=True)
    shown, code = 0, 1
    try:
        producer.start()
        print(f"demo: sending generated storefront events at {args.rate:.0f}/s to "
              f"{settings.topics.events}", flush=True)
        if settings.job.metrics_port > 0:
            print(f"demo: Flink job metrics at http://127.0.0.1:{settings.job.metrics_port}"
                  "/metrics", flush=True)
        print("demo: live recommendations follow (Ctrl-C stops everything)\n", flush=True)
        consumer: Any = kafka_config.consumer(
            settings, settings.topics.recommendations, isolation_level="read_committed",
            auto_offset_reset="latest", consumer_timeout_ms=1000,
        )
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
        finally:
            consumer.close()
        code = 0 if shown else 1
    except KeyboardInterrupt:  # signals.Stopped: SIGTERM, SIGINT or SIGHUP
        print(f"\ndemo: {STOP.name} received; stopping the job, the traffic"
              f"{' and the broker' if started_broker else ''} within {bound:.0f}s", flush=True)
        code = exit_code(STOP.signum or 0)
    finally:
        started = STOP.received_at or time.monotonic()
        stop.set()
        if _stop_run_child(job, job_bound) == EXIT_FORCED:
            code = EXIT_FORCED
        producer.join(timeout=5)
        if started_broker:
            broker_down(settings, timeout_s=max(started + bound - time.monotonic(), 3.0))
        if STOP.signum:
            print(f"demo: stopped in {time.monotonic() - started:.1f}s, exit {code}",
                  flush=True)
    print(f"demo: {shown} recommendation lists received")
    return code


def _stop_run_child(job: subprocess.Popen[bytes], job_bound: float) -> int:
    """SIGTERM to ``freshrec run`` (which stops its job and JVM within ``job_bound``), then
    kill whatever of its tree is left; its exit code, EXIT_FORCED when anything was killed."""
    tree = process_tree(job.pid)  # before the stop: a JVM left behind is still found
    if job.poll() is None:
        job.send_signal(signal.SIGTERM)
    try:
        code: int | None = job.wait(timeout=job_bound + 3)
    except subprocess.TimeoutExpired:
        code = None
    if stop_processes(tree, timeout_s=1, what="demo", log=say):
        code = None
    job.wait()
    print(f"demo: job stopped (exit {code if code is not None else 'killed'})", flush=True)
    return EXIT_FORCED if code is None else code


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="local broker + job + generated traffic, printing live recommendations")
    p.add_argument("--rate", type=float, default=200.0, help="events/s of demo traffic")
    p.add_argument("--seconds", type=float, default=0.0,
                   help="stop after this many seconds (default: run until Ctrl-C)")
    p.add_argument("--every", type=int, default=10, help="print every Nth list received")
    p.set_defaults(func=demo)
