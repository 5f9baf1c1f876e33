"""``freshrec produce``: send storefront events to Kafka from a file or the generator.

Examples::

    freshrec produce --generator --rate 5000 --count 100000
    freshrec produce --generator --seed 7 --reuse-ids    # the ids of every seed-7 run
    freshrec produce data/UserBehavior.csv --format taobao --rate 2000
    freshrec produce events.jsonl --validate

The producer is idempotent with ``acks=all`` (no duplicates or reordering from retries);
the record key is ``user_id`` (``item_id`` for ``item_upsert``), so one user's events stay
in order on one partition. The generator's stream is the same for a seed, but its event
ids are new on each run (the job drops repeated ids as duplicates) unless ``--reuse-ids``.
JSONL lines are sent as their exact bytes: without ``--validate`` invalid lines go out too
(handy for exercising the dead-letter path); with it they are refused and listed with
their line numbers. Rows of the other formats that
cannot be mapped are always listed. A progress line goes to stderr; the final counts
(sent / acked / failed / refused) and the achieved rate go to stdout.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from freshrec.datasets import FORMATS, RowError, jsonl_lines, read_events
from freshrec_common.metrics import PROCESS_METRICS
from freshrec_common.settings import Settings
from schemas.event_fields import DecodeError
from schemas.events import Event, decode_event, encode_event

MAX_LISTED = 50  # refused rows printed one by one; the rest are only counted

# Throughput-oriented producer options (acks=all and idempotence are non-negotiable).
PRODUCER_OPTIONS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "linger_ms": 10,
    "batch_size": 256 * 1024,
    "max_in_flight_requests_per_connection": 5,  # the most idempotence allows
    "max_block_ms": 30_000,
    "request_timeout_ms": 30_000,
}


def record_key(event: Event) -> bytes | None:
    """Partitioning key: ``item_id`` for ``item_upsert``, else ``user_id``.

    >>> record_key(Event("e", "item_upsert", 1_700_000_000_000, item_id="i1"))
    b'i1'
    >>> record_key(Event("e", "view", 1_700_000_000_000, user_id="u1", item_id="i1"))
    b'u1'
    """
    key = event.item_id if event.event_type == "item_upsert" else event.user_id
    return None if key is None else key.encode("utf-8")


def _lenient_key(line: bytes) -> bytes | None:
    """Best-effort key of a line that is not a valid event (sent unvalidated)."""
    try:
        doc = json.loads(line)
        key = doc.get("item_id") if doc.get("event_type") == "item_upsert" else doc.get("user_id")
        return key.encode("utf-8") if isinstance(key, str) else None
    except (ValueError, AttributeError, UnicodeError, RecursionError):
        return None


@dataclass
class ProduceStats:
    """Counts of one run; ``acked``/``failed`` are updated from the producer's I/O thread."""

    sent: int = 0
    acked: int = 0
    failed: int = 0
    refused: int = 0
    first_error: str | None = None
    started: float = field(default_factory=time.perf_counter)
    sending_s: float = 0.0
    total_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def on_ack(self, _metadata: Any) -> None:
        with self._lock:
            self.acked += 1

    def on_error(self, exc: BaseException) -> None:
        with self._lock:
            self.failed += 1
            if self.first_error is None:
                self.first_error = repr(exc)

    @property
    def rate(self) -> float:
        """Achieved send rate (events/s) over the sending phase."""
        return self.sent / self.sending_s if self.sending_s > 0 else 0.0

    def summary(self, target: float) -> str:
        goal = f" (target {target:,.0f}/s)" if target > 0 else ""
        text = (f"sent {self.sent}, acked {self.acked}, failed {self.failed}, "
                f"refused {self.refused} in {self.total_s:.1f} s; "
                f"achieved {self.rate:,.0f} events/s{goal}")
        if self.first_error:
            text += f"; first error: {self.first_error}"
        return text


class Progress:
    """A plain-text progress line on stderr, redrawn at most ``hz`` times a second."""

    def __init__(self, total: int | None, stream: IO[str] | None = None, hz: float = 4.0,
                 enabled: bool = True) -> None:
        stream = stream or sys.stderr  # looked up now: tests and callers swap sys.stderr
        self.total, self.stream, self.every = total, stream, 1.0 / hz
        self.enabled = enabled
        self.tty = stream.isatty()
        self._last = 0.0

    def update(self, stats: ProduceStats, force: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not force and now - self._last < (
                self.every if self.tty else 5.0)):  # a log file gets a line every 5 s
            return
        self._last = now
        elapsed = max(now - stats.started, 1e-9)
        if self.total:
            frac = min(stats.sent / self.total, 1.0)
            bar = "#" * int(frac * 30)
            head = f"[{bar:<30}] {frac:4.0%} {stats.sent}/{self.total}"
        else:
            head = f"{stats.sent} sent"
        line = (f"{head}  {stats.sent / elapsed:,.0f}/s  acked {stats.acked}  "
                f"failed {stats.failed}  refused {stats.refused}")
        self.stream.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


class _Metrics:
    """Optional prometheus-client counters (``--metrics-port``), own registry."""

    def __init__(self, port: int) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

        def counter(name: str) -> Any:
            spec = PROCESS_METRICS[name]  # prometheus-client appends _total itself
            return Counter(name.removesuffix("_total"), spec.help, registry=self.registry)

        self.registry = CollectorRegistry()
        self.sent = counter("freshrec_produce_events_sent_total")
        self.acked = counter("freshrec_produce_events_acked_total")
        self.failed = counter("freshrec_produce_events_failed_total")
        self.refused = counter("freshrec_produce_rows_refused_total")
        rate = PROCESS_METRICS["freshrec_produce_rate_events_per_second"]
        self.rate = Gauge(rate.name, rate.help, registry=self.registry)
        self._seen = (0, 0, 0, 0)
        start_http_server(port, registry=self.registry)

    def sync(self, stats: ProduceStats) -> None:
        now = (stats.sent, stats.acked, stats.failed, stats.refused)
        for counter, new, old in zip((self.sent, self.acked, self.failed, self.refused),
                                     now, self._seen, strict=True):
            if new > old:
                counter.inc(new - old)
        self._seen = now
        elapsed = time.perf_counter() - stats.started
        self.rate.set(stats.sent / elapsed if elapsed > 0 else 0.0)


class Refusals:
    """Reports refused rows on stderr by line number (the first ``MAX_LISTED``)."""

    def __init__(self, stats: ProduceStats, stream: IO[str] | None = None) -> None:
        self.stats, self.stream = stats, stream or sys.stderr

    def __call__(self, error: RowError) -> None:
        self.stats.refused += 1
        if self.stats.refused <= MAX_LISTED:
            self.stream.write(f"refused line {error.line}: {error.code}: {error.message}\n")
        elif self.stats.refused == MAX_LISTED + 1:
            self.stream.write("... more refused rows are only counted\n")


def jsonl_records(path: Path, validate: bool, refuse: Refusals) -> Iterator[tuple[bytes | None,
                                                                                 bytes]]:
    """(key, value) per line, the value being the line's exact bytes."""
    with path.open("rb") as f:
        for line, got in jsonl_lines(f):
            if not isinstance(got, RowError):
                yield record_key(got), line
            elif validate:
                refuse(got)
            else:
                yield _lenient_key(line), line


def event_records(events: Iterator[Event], validate: bool,
                  refuse: Refusals) -> Iterator[tuple[bytes | None, bytes]]:
    for n, ev in enumerate(events, 1):
        value = encode_event(ev)
        if validate:
            got = decode_event(value)
            if isinstance(got, DecodeError):  # cannot happen for adapter/generator output
                refuse(RowError(n, got.code, f"{got.field}: {got.message}", value[:200].decode()))
                continue
        yield record_key(ev), value


def produce(
    producer: Any,
    topic: str,
    records: Iterator[tuple[bytes | None, bytes]],
    stats: ProduceStats,
    rate: float = 0.0,
    count: int | None = None,
    progress: Progress | None = None,
    metrics: _Metrics | None = None,
    flush_timeout_s: float = 60.0,
) -> ProduceStats:
    """Send ``records`` at ``rate`` events/s (0 = as fast as possible), then flush.

    Pacing is against the schedule ``start + i / rate`` rather than per-record sleeps, so
    short stalls (GC, a full buffer) are caught up and the average holds the target.
    """
    stats.started = start = time.perf_counter()
    interval = 1.0 / rate if rate > 0 else 0.0
    send = producer.send
    for key, value in records:
        if count is not None and stats.sent >= count:
            break
        if interval:
            ahead = start + stats.sent * interval - time.perf_counter()
            if ahead > 0.002:  # sleeping for less is below the OS timer's resolution
                time.sleep(ahead)
        try:
            future = send(topic, key=key, value=value)
        except Exception as exc:  # buffer full past max_block_ms, serialisation, closed
            stats.on_error(exc)
            stats.sent += 1
            continue
        future.add_callback(stats.on_ack)
        future.add_errback(stats.on_error)
        stats.sent += 1
        if (stats.sent & 255) == 0:
            if progress is not None:
                progress.update(stats)
            if metrics is not None:
                metrics.sync(stats)
    stats.sending_s = time.perf_counter() - start
    producer.flush(timeout=flush_timeout_s)
    stats.total_s = time.perf_counter() - start
    if progress is not None:
        progress.update(stats, force=True)
        progress.close()
    if metrics is not None:
        metrics.sync(stats)
    return stats


def register(subparsers: Any) -> None:
    """Add ``freshrec produce``."""
    p = subparsers.add_parser(
        "produce", help="send events to Kafka from a file or the synthetic generator",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", nargs="?", type=Path, help="input file (see --format)")
    p.add_argument("--format", "-f", choices=FORMATS, default="jsonl",
                   help="input format of FILE (default jsonl: event v1 per line)")
    p.add_argument("--generator", action="store_true",
                   help="send synthetic storefront events instead of a file")
    p.add_argument("--rate", type=float, default=0.0,
                   help="target events per second (default 0: as fast as possible)")
    p.add_argument("--count", type=int, default=None,
                   help="events to send (generator default 10000; file default: all)")
    p.add_argument("--validate", action="store_true",
                   help="refuse invalid rows, listing their line numbers")
    p.add_argument("--topic", help="target topic (default: topics.events)")
    p.add_argument("--seed", type=int, default=None, help="generator seed (default model.seed)")
    p.add_argument("--reuse-ids", action="store_true",
                   help="generator: the event ids of every run with this seed (the job drops"
                        " the ones it has seen as duplicates); default: ids new to this run")
    p.add_argument("--users", type=int, default=1000, help="generator: initial users")
    p.add_argument("--items", type=int, default=5000, help="generator: initial items")
    p.add_argument("--drift-at", type=int, default=None,
                   help="generator: event index where tastes shift")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    p.add_argument("--metrics-port", type=int, default=0,
                   help="serve Prometheus /metrics (freshrec_produce_*) on this port")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from freshrec.generator import generate_events, new_run_id
    from freshrec_common import kafka_config

    if args.generator == (args.file is not None):
        print("freshrec produce: give either FILE or --generator", file=sys.stderr)
        return 2
    if args.rate < 0 or (args.count is not None and args.count < 0):
        print("freshrec produce: --rate and --count must be >= 0", file=sys.stderr)
        return 2
    topic = args.topic or settings.topics.events
    stats = ProduceStats()
    refuse = Refusals(stats)
    count = args.count
    records: Iterator[tuple[bytes | None, bytes]]
    if args.generator:
        count = 10_000 if count is None else count
        seed = settings.model.seed if args.seed is None else args.seed
        run_id = "" if args.reuse_ids else new_run_id()
        records = event_records(
            generate_events(count, seed=seed, n_users=args.users, n_items=args.items,
                            drift_at=args.drift_at, run_id=run_id), args.validate, refuse)
        if run_id:
            print(f"generator: seed {seed}, event ids g{seed}-{run_id}-*, new to this run")
        else:
            print(f"generator: seed {seed}, event ids g{seed}-* repeat every run with this seed"
                  " (--reuse-ids): a job that has seen them drops them as duplicates")
    else:
        if not args.file.is_file():
            print(f"freshrec produce: no such file: {args.file}", file=sys.stderr)
            return 2
        if args.format == "jsonl":
            records = jsonl_records(args.file, args.validate, refuse)
        else:
            records = event_records(read_events(args.file, args.format, refuse),
                                    args.validate, refuse)
        # Read up to the first record before connecting: an unreadable file or a header of
        # another format is reported at once, not after the broker was reached.
        try:
            first = next(records, None)
        except (OSError, UnicodeError, ValueError) as exc:
            print(f"freshrec produce: {args.file}: not readable as {args.format}: {exc}",
                  file=sys.stderr)
            return 2
        if first is None and stats.refused:
            print(f"freshrec produce: {args.file}: no row is readable as {args.format}",
                  file=sys.stderr)
            return 1
        if first is not None:
            records = itertools.chain([first], records)
    metrics = _Metrics(args.metrics_port) if args.metrics_port else None
    producer = kafka_config.producer(settings, client_id="freshrec-produce", **PRODUCER_OPTIONS)
    progress = Progress(count, enabled=not args.no_progress)
    try:
        produce(producer, topic, records, stats, rate=args.rate, count=count,
                progress=progress, metrics=metrics)
    except KeyboardInterrupt:
        producer.flush(timeout=10)
        stats.sending_s = stats.total_s = time.perf_counter() - stats.started
        print(f"interrupted: {stats.summary(args.rate)}")
        raise
    finally:
        producer.close(timeout=10)
    print(f"{topic}: {stats.summary(args.rate)}")
    if stats.failed or stats.acked != stats.sent:
        return 1
    return 1 if stats.refused else 0
