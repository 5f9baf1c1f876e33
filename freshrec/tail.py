"""``freshrec tail``: pretty-print the recommendation topic as it changes.

Examples::

    freshrec tail                           # new lists from now on, until Ctrl-C
    freshrec tail --user u42 --from-beginning
    freshrec tail --from-beginning --max 10 --timeout 5

Reads with ``isolation_level=read_committed`` (the job writes in Kafka transactions when
it runs exactly-once, and aborted lists must never be shown) and without a consumer group,
so tailing never moves anyone's offsets. A record with a null value is a tombstone: the
user was forgotten (``forget_user``), shown as ``forgotten``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import IO, Any

from freshrec_common.settings import Settings
from schemas.recommendation import Recommendation, ScoredItem


def _when(ms: int) -> str:
    """Epoch ms as a short UTC time.

    >>> _when(1_700_000_000_123)
    '2023-11-14T22:13:20.123Z'
    """
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
    except (OverflowError, OSError, ValueError):
        return str(ms)


def format_record(key: bytes | None, value: bytes | None, where: str = "") -> str:
    """Human-readable text of one recommendation record (several lines).

    >>> rec = Recommendation("u1", (ScoredItem("i2", 0.91, "bought with i1"),), "mf-1",
    ...                      1_700_000_000_500, 1_700_000_000_000, "e7", 3)
    >>> print(format_record(b"u1", rec.to_bytes()))
    user u1  seq 3  model mf-1  at 2023-11-14T22:13:20.500Z  (after e7 @ 2023-11-14T22:13:20.000Z)
       1. i2                    0.9100  bought with i1
    >>> print(format_record(b"u1", None))
    user u1  forgotten
    """
    user = key.decode("utf-8", "replace") if key is not None else "?"
    suffix = f"  [{where}]" if where else ""
    if value is None:
        return f"user {user}  forgotten{suffix}"
    try:
        rec = Recommendation.from_json(value)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return f"user {user}  unreadable record: {exc}{suffix}"
    head = (f"user {rec.user_id}  seq {rec.seq}  model {rec.model_version}  "
            f"at {_when(rec.generated_at)}  "
            f"(after {rec.last_event_id} @ {_when(rec.last_event_ts)})")
    if rec.cold_start:
        head += "  [cold start]"
    lines = [head + suffix]
    if not rec.items:
        lines.append("   (no items)")
    for rank, item in enumerate(rec.items, 1):
        lines.append(f"  {rank:>2}. {item.item_id:<20}  {item.score:.4f}  {item.reason}")
    return "\n".join(lines)


def tail(
    consumer: Any,
    out: IO[str],
    user: str | None = None,
    max_records: int | None = None,
    show_position: bool = False,
) -> int:
    """Print records from ``consumer`` until it times out or ``max_records`` were shown."""
    wanted = user.encode("utf-8") if user is not None else None
    shown = 0
    for msg in consumer:  # ends after consumer_timeout_ms without records
        if wanted is not None and msg.key != wanted:
            continue
        where = f"p{msg.partition}@{msg.offset}" if show_position else ""
        out.write(format_record(msg.key, msg.value, where) + "\n")
        out.flush()
        shown += 1
        if max_records is not None and shown >= max_records:
            break
    return shown


def register(subparsers: Any) -> None:
    """Add ``freshrec tail``."""
    p = subparsers.add_parser(
        "tail", help="pretty-print the recommendation topic", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--user", help="only this user's lists")
    p.add_argument("--from-beginning", action="store_true",
                   help="start at the oldest retained record instead of new ones")
    p.add_argument("--max", type=int, default=None, help="stop after N records")
    p.add_argument("--timeout", type=float, default=None,
                   help="stop after S seconds without a new record (default: never)")
    p.add_argument("--topic", help="topic (default: topics.recommendations)")
    p.add_argument("--positions", action="store_true", help="show partition@offset")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from freshrec_common import kafka_config

    if (args.max is not None and args.max < 1) or (args.timeout is not None and args.timeout <= 0):
        print("freshrec tail: --max must be >= 1 and --timeout > 0", file=sys.stderr)
        return 2
    topic = args.topic or settings.topics.recommendations
    consumer = kafka_config.consumer(
        settings, topic,
        client_id="freshrec-tail",
        group_id=None,  # no group: never commits, never disturbs other readers
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest" if args.from_beginning else "latest",
        consumer_timeout_ms=int(args.timeout * 1000) if args.timeout else float("inf"),
    )
    try:
        shown = tail(consumer, sys.stdout, user=args.user, max_records=args.max,
                     show_position=args.positions)
    finally:
        consumer.close()
    if args.timeout:
        print(f"({shown} records from {topic})", file=sys.stderr)
    return 0


__all__ = ["ScoredItem", "format_record", "register", "run", "tail"]
