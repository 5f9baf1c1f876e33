"""The output consumer of the end-to-end benchmark and the soak: a separate process, so that
the producer's pacing and the consumer's stamps do not share one GIL. It reads the
recommendations topic from the start, forever, and answers commands."""

from __future__ import annotations

import multiprocessing as mp
import re
import time
from typing import Any

from freshrec_common.polling import wait_until

_TAIL_INT = {
    name: re.compile(rb'"' + name.encode() + rb'":(-?\d+)')
    for name in ("last_event_ts", "events_applied", "generated_at", "ts")
}


POLL_RECORDS = 200


def _field(value: bytes, name: str) -> int:
    # The fields sit after the items; search the tail only (ids are <= 128 characters).
    m = _TAIL_INT[name].search(value, max(0, len(value) - 700))
    return int(m.group(1)) if m else -1


def consumer_main(kwargs: dict[str, Any], topic: str, conn: Any) -> None:
    from kafka import KafkaConsumer, TopicPartition

    # kafka-python parses a fetch's records lazily, as poll hands them out, and a poll's
    # records share one stamp taken after it returns: small polls stamp each list close to
    # when it is parsed, where one poll of an exactly-once commit's ~5,000 lists stamped
    # the first of them after all were parsed (~40 ms later).
    consumer = KafkaConsumer(
        **kwargs, auto_offset_reset="earliest", enable_auto_commit=False,
        isolation_level="read_committed", fetch_max_wait_ms=20,
        max_poll_records=POLL_RECORDS, max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    # No deadline of its own: the parent gives up on an answer (OutputConsumer.ask).
    found = wait_until(lambda: consumer.partitions_for_topic(topic), float("inf"))
    assert found is not None
    parts = [TopicPartition(topic, p) for p in sorted(found)]
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
