"""``freshrec produce`` and ``freshrec tail`` against the suite's real Kafka broker."""

from __future__ import annotations

import argparse
import dataclasses
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devstack.processes import free_ports
from freshrec import produce, tail
from freshrec.datasets import write_jsonl
from freshrec.generator import generate_events
from schemas.events import Event, decode_event, encode_event
from schemas.recommendation import Recommendation, ScoredItem


def run_cli(broker: Any, module: Any, *argv: str) -> int:
    """Parse ``argv`` with the subcommand's own ``register`` and run it on the test broker."""
    parser = argparse.ArgumentParser(prog="freshrec")
    module.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args, broker.settings)


def consume_all(broker: Any, topic: str, expected: int, timeout_s: float = 30.0
                ) -> list[tuple[bytes | None, bytes | None]]:
    consumer = broker.consumer(topic, group_id=None, auto_offset_reset="earliest",
                               isolation_level="read_committed", consumer_timeout_ms=1000)
    got: list[tuple[bytes | None, bytes | None]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < expected and time.monotonic() < deadline:
            got.extend((m.key, m.value) for m in consumer)
    finally:
        consumer.close()
    return got


def by_id(records: list[tuple[bytes | None, bytes | None]]) -> dict[str, tuple[bytes, Event]]:
    out: dict[str, tuple[bytes, Event]] = {}
    for key, value in records:
        ev = decode_event(value)
        assert isinstance(ev, Event), ev
        assert ev.event_id not in out, f"duplicate {ev.event_id}"
        out[ev.event_id] = (key, ev)  # type: ignore[assignment]
    return out


def test_produce_jsonl_round_trip(kafka_broker: Any, fresh_topic: Callable[..., str],
                                  tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    topic = fresh_topic(partitions=2)
    events = list(generate_events(1500, seed=21))
    path = tmp_path / "events.jsonl"
    write_jsonl(events, path)
    assert run_cli(kafka_broker, produce, "produce", str(path), "--topic", topic,
                   "--no-progress") == 0
    assert "sent 1500, acked 1500, failed 0, refused 0" in capsys.readouterr().out
    got = by_id(consume_all(kafka_broker, topic, len(events)))
    assert len(got) == len(events)
    for ev in events:
        key, back = got[ev.event_id]
        assert back == ev
        assert key == (ev.item_id if ev.event_type == "item_upsert" else ev.user_id).encode()


def test_produce_generator_round_trip_with_rate(
    kafka_broker: Any, fresh_topic: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    topic = fresh_topic(partitions=2)
    t0 = time.perf_counter()
    assert run_cli(kafka_broker, produce, "produce", "--generator", "--count", "3000",
                   "--rate", "2000", "--seed", "5", "--topic", topic) == 0
    elapsed = time.perf_counter() - t0
    out = capsys.readouterr()
    assert "sent 3000, acked 3000, failed 0" in out.out
    assert "3000/3000" in out.err  # the progress line
    assert elapsed >= 1.3  # 3000 events at 2000/s cannot take much less than 1.5 s
    first_ids = re.search(r"event ids (g5-\w+-)\*, new to this run", out.out)
    assert first_ids, out.out
    # Run twice, the seed gives the same stream under ids new to each run.
    assert run_cli(kafka_broker, produce, "produce", "--generator", "--count", "3000",
                   "--seed", "5", "--topic", topic, "--no-progress") == 0
    second_ids = re.search(r"event ids (g5-\w+-)\*, new to this run", capsys.readouterr().out)
    assert second_ids and second_ids[1] != first_ids[1]
    got = by_id(consume_all(kafka_broker, topic, 6000))  # asserts the ids are distinct
    expected = list(generate_events(3000, seed=5))
    for prefix in (first_ids[1], second_ids[1]):
        run = {i.removeprefix(prefix): e for i, (_, e) in got.items() if i.startswith(prefix)}
        assert run == {e.event_id.removeprefix("g5-"): dataclasses.replace(
            e, event_id=prefix + e.event_id.removeprefix("g5-")) for e in expected}


def test_produce_generator_reuse_ids_repeats_the_seed_ids(
    kafka_broker: Any, fresh_topic: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    topic = fresh_topic()
    assert run_cli(kafka_broker, produce, "produce", "--generator", "--count", "200",
                   "--seed", "5", "--reuse-ids", "--topic", topic, "--no-progress") == 0
    assert "event ids g5-* repeat every run with this seed (--reuse-ids)" in (
        capsys.readouterr().out)
    got = by_id(consume_all(kafka_broker, topic, 200))
    assert {i: e for i, (_, e) in got.items()} == {
        e.event_id: e for e in generate_events(200, seed=5)}


def test_produce_validate_refuses_invalid_rows_by_line(
    kafka_broker: Any, fresh_topic: Callable[..., str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = fresh_topic()
    good = [Event(f"e{i}", "view", 1_700_000_000_000 + i, user_id="u", item_id="i")
            for i in range(3)]
    lines = [encode_event(good[0]),
             b'{"event_id":"x","event_type":"buy","user_id":"u","item_id":"i","ts":1}',
             encode_event(good[1]),
             b"not json",
             encode_event(good[2])]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    port = free_ports(1)[0]
    assert run_cli(kafka_broker, produce, "produce", str(path), "--validate", "--topic", topic,
                   "--no-progress", "--metrics-port", str(port)) == 1
    out = capsys.readouterr()
    assert "refused line 2: unknown_event_type" in out.err
    assert "refused line 4: invalid_json" in out.err
    assert "sent 3, acked 3, failed 0, refused 2" in out.out
    got = by_id(consume_all(kafka_broker, topic, 3))
    assert [got[e.event_id][1] for e in good] == good
    # The optional /metrics endpoint (its server thread outlives the run in-process).
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    assert "freshrec_produce_events_sent_total 3.0" in metrics
    assert "freshrec_produce_events_acked_total 3.0" in metrics
    assert "freshrec_produce_rows_refused_total 2.0" in metrics


def test_produce_without_validate_sends_lines_verbatim(
    kafka_broker: Any, fresh_topic: Callable[..., str], tmp_path: Path
) -> None:
    # Exact bytes go out, invalid ones too: that is how the dead-letter path is exercised.
    topic = fresh_topic()
    lines = [b'{"event_id":"a","event_type":"view","user_id":"u7","item_id":"i","ts":1}',
             b"\xff\xfe garbage"]
    path = tmp_path / "raw.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    run_cli(kafka_broker, produce, "produce", str(path), "--topic", topic, "--no-progress")
    got = consume_all(kafka_broker, topic, 2)
    assert sorted(v for _, v in got) == sorted(lines)  # type: ignore[type-var]
    assert (b"u7", lines[0]) in got


def test_produce_from_adapter_format(kafka_broker: Any, fresh_topic: Callable[..., str],
                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    topic = fresh_topic()
    path = tmp_path / "UserBehavior.csv"
    path.write_text("1,10,7,pv,1511658000\n1,10,7,wink,1511658001\n2,11,7,buy,1511658002\n")
    assert run_cli(kafka_broker, produce, "produce", str(path), "--format", "taobao",
                   "--topic", topic, "--no-progress") == 1  # one row refused
    out = capsys.readouterr()
    assert "refused line 2: unknown_event_type" in out.err
    got = by_id(consume_all(kafka_broker, topic, 2))
    assert sorted(e.event_type for _, e in got.values()) == ["purchase", "view"]


def test_tail_prints_recommendations_and_tombstones(
    kafka_broker: Any, fresh_topic: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    topic = fresh_topic(configs={"cleanup.policy": "compact"})
    rec = Recommendation("u1", (ScoredItem("i2", 0.91, "bought together with i1"),
                                ScoredItem("i3", 0.5, "trending in c4")),
                         "seq-1", 1_700_000_000_500, 1_700_000_000_000, "e7", 3)
    other = Recommendation("u2", (ScoredItem("i9", 0.1, "popular now"),), "seq-1",
                           1_700_000_000_600, 1_700_000_000_100, "e8", 1, cold_start=True)
    producer = kafka_broker.producer(acks="all")
    producer.send(topic, key=b"u1", value=rec.to_bytes())
    producer.send(topic, key=b"u2", value=other.to_bytes())
    producer.send(topic, key=b"u1", value=None)  # tombstone: u1 was forgotten
    producer.flush()
    producer.close()

    assert run_cli(kafka_broker, tail, "tail", "--topic", topic, "--from-beginning",
                   "--max", "3", "--timeout", "20") == 0
    out = capsys.readouterr().out
    assert "user u1  seq 3  model seq-1" in out
    assert "1. i2" in out and "bought together with i1" in out and "0.9100" in out
    assert "trending in c4" in out
    assert "user u2" in out and "[cold start]" in out
    assert "user u1  forgotten" in out
    assert out.index("bought together") < out.index("forgotten")

    assert run_cli(kafka_broker, tail, "tail", "--topic", topic, "--from-beginning",
                   "--user", "u2", "--timeout", "3") == 0
    out = capsys.readouterr().out
    assert "user u2" in out and "u1" not in out
