"""The local Kafka stack against a real broker: data round trip, topic configs, lifecycle.

Data tests share the session broker (``kafka_broker``). Lifecycle tests (up twice, killed
broker, down/status, a pid file naming another program) drive ``python -m
freshrec.kafka`` in subprocesses, as a user's shell would, against a broker of their
own so the session broker is never disturbed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from devstack.kafka_broker import broker_down, broker_status
from devstack.kafka_topics import (
    COMPACTED_TOPIC_CONFIGS,
    create_topic,
    default_topics,
    ensure_topics,
)
from devstack.processes import cmdline
from freshrec_common import kafka_config
from freshrec_common.polling import wait_until
from freshrec_common.settings import Settings, load_settings
from tests.kafka_fixtures import REPO_ROOT, KafkaBroker, local_broker_overrides


def _produce(broker: KafkaBroker, topic: str, records: list[tuple]) -> list[tuple[int, int]]:
    """Send (key, value, headers) records with acks=all; return (partition, offset) of each."""
    producer = broker.producer(acks="all", linger_ms=5, max_request_size=2_000_000)
    try:
        futures = [producer.send(topic, key=k, value=v, headers=h) for k, v, h in records]
        producer.flush(timeout=30)
        metas = [f.get(timeout=30) for f in futures]
    finally:
        producer.close(timeout=10)
    return [(m.partition, m.offset) for m in metas]


def _consume_all(broker: KafkaBroker, topic: str, expected: int, timeout_s: float = 30.0):
    """Every record of ``topic`` from the beginning, keyed by (partition, offset)."""
    consumer = broker.consumer(
        group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
        fetch_max_bytes=4_000_000, max_partition_fetch_bytes=4_000_000,
    )  # fmt: skip
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        seen: dict[tuple[int, int], object] = {}
        deadline = time.monotonic() + timeout_s
        while len(seen) < expected and time.monotonic() < deadline:
            for tp_records in consumer.poll(timeout_ms=500).values():
                for r in tp_records:
                    seen[(r.partition, r.offset)] = r
        # Nothing beyond what was produced shows up.
        for tp_records in consumer.poll(timeout_ms=500).values():
            for r in tp_records:
                seen[(r.partition, r.offset)] = r
        return seen
    finally:
        consumer.close()


# --------------------------------------------------------------------------- session broker


def test_round_trip_preserves_every_message_exactly(kafka_broker, fresh_topic):
    topic = fresh_topic(partitions=3)
    records: list[tuple] = []
    for i in range(600):
        key = f"user-{i % 23}".encode()
        value = f'{{"event_id": "e{i}", "n": {i}}}'.encode()
        records.append((key, value, []))
    records += [
        (b"user-null", None, []),  # tombstone: a null value
        (None, b"no key at all", []),
        (b"user-empty", b"", []),
        (b"\xff\xfe\x00bin-key", b"\x00\xff\xfe\x80 not utf-8 \xc3\x28", []),
        ("ключ-ü".encode(), "значение ✓ ü".encode(), []),
        (b"user-big", bytes(range(256)) * 800, []),  # 200 KB
        (b"user-headers", b"v", [("trace", b"\x00\x01"), ("empty", b"")]),
        (b"user-1", b"same key again, later", []),
    ]
    positions = _produce(kafka_broker, topic, records)
    assert len(set(positions)) == len(records)

    seen = _consume_all(kafka_broker, topic, expected=len(records))
    assert set(seen) == set(positions), "records missing or extra"
    for (key, value, headers), pos in zip(records, positions, strict=True):
        got = seen[pos]
        assert got.key == key
        assert got.value == value
        assert [(h[0], h[1]) for h in got.headers] == headers
    # Records with the same key land in one partition in send order.
    by_key: dict[bytes | None, list[tuple[int, int]]] = {}
    for (key, _v, _h), pos in zip(records, positions, strict=True):
        by_key.setdefault(key, []).append(pos)
    for key, pos_list in by_key.items():
        if key is not None:
            assert len({p for p, _ in pos_list}) == 1, key
            assert [o for _, o in pos_list] == sorted(o for _, o in pos_list), key


def _topic_configs(broker: KafkaBroker, names: list[str]) -> dict[str, dict[str, str]]:
    admin = broker.admin()
    try:
        res = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n) for n in names], config_filter="all"
        )["topic"]
        meta = {t["name"]: t for t in admin.describe_topics(names)}
    finally:
        admin.close()
    out = {}
    for n in names:
        out[n] = {k: v["value"] for k, v in res[n].items()}
        out[n]["_partitions"] = str(len(meta[n]["partitions"]))
    return out


def test_default_topics_exist_with_specified_configs(kafka_broker):
    t = kafka_broker.settings.topics
    assert (t.events, t.dlq) == ("freshrec.events", "freshrec.events.dlq")
    assert (t.recommendations, t.item_embeddings) == (
        "freshrec.recommendations",
        "freshrec.item-embeddings",
    )
    cfg = _topic_configs(kafka_broker, [t.events, t.dlq, t.recommendations, t.item_embeddings])
    for name in (t.recommendations, t.item_embeddings):
        assert cfg[name]["cleanup.policy"] == "compact"
        # The values themselves are pinned by tests/unit/devstack/test_local_kafka.py.
        assert {k: cfg[name][k] for k in COMPACTED_TOPIC_CONFIGS} == dict(
            COMPACTED_TOPIC_CONFIGS), name
    assert cfg[t.events]["cleanup.policy"] == "delete"
    assert cfg[t.dlq]["cleanup.policy"] == "delete"
    for name in (t.events, t.dlq, t.recommendations, t.item_embeddings):
        assert cfg[name]["_partitions"] == str(t.partitions)
        assert cfg[name]["min.insync.replicas"] == "1"


def test_status_lists_topics_with_partitions_and_configs(kafka_broker):
    st = broker_status(kafka_broker.settings)
    assert st.running and st.pid == kafka_broker.info.pid
    assert st.bootstrap == kafka_broker.bootstrap
    by_name = {t.name: t for t in st.topics}
    t = kafka_broker.settings.topics
    assert by_name[t.recommendations].configs == COMPACTED_TOPIC_CONFIGS
    assert by_name[t.item_embeddings].configs == COMPACTED_TOPIC_CONFIGS
    assert by_name[t.events].configs == {}
    assert by_name[t.events].partitions == t.partitions
    assert not any(n.startswith("__") for n in by_name)


def test_create_topic_is_idempotent_and_applies_configs(kafka_broker, fresh_topic):
    name = fresh_topic(partitions=4, configs={"cleanup.policy": "compact", "retention.ms": "60000"})
    assert create_topic(kafka_broker.settings, name) is False  # exists already
    cfg = _topic_configs(kafka_broker, [name])[name]
    assert (cfg["cleanup.policy"], cfg["retention.ms"], cfg["_partitions"]) == (
        "compact",
        "60000",
        "4",
    )


def test_ensure_topics_creates_missing_and_brings_existing_to_the_configs(
    kafka_broker, fresh_topic
):
    # Stand-ins for topics made by hand or by an older `kafka up`: one not compacted, one
    # compacted with the broker's default segment roll and a retention.ms of its own.
    not_compacted = fresh_topic()
    old_compacted = fresh_topic(configs={"cleanup.policy": "compact", "retention.ms": "3600000"})
    settings = kafka_broker.settings.replace(
        "topics", recommendations=not_compacted, item_embeddings=old_compacted
    )
    admin = kafka_broker.admin()
    try:
        messages: list[str] = []
        assert ensure_topics(settings, admin, log=messages.append) == []
        assert any(
            not_compacted in m and "cleanup.policy=compact (was the broker default)" in m
            for m in messages
        ), messages
        assert any(old_compacted in m and "segment.ms=60000" in m for m in messages), messages
        assert not any(old_compacted in m and "cleanup.policy" in m for m in messages), messages

        # The broker applies config changes through its metadata log: a describe right after
        # the alter may still show the old values (seen on a loaded machine).
        def applied() -> bool:
            cfg = _topic_configs(kafka_broker, [not_compacted, old_compacted])
            return all(cfg[n][k] == v for n in (not_compacted, old_compacted)
                       for k, v in COMPACTED_TOPIC_CONFIGS.items())

        assert wait_until(applied, 30, interval_s=0.5), "the configs were not applied in 30 s"
        # A second run finds nothing to change.
        again: list[str] = []
        assert ensure_topics(settings, admin, log=again.append) == []
        assert not any("kafka: set" in m for m in again), again
    finally:
        admin.close()
    cfg = _topic_configs(kafka_broker, [not_compacted, old_compacted])
    for name in (not_compacted, old_compacted):
        assert {k: cfg[name][k] for k in COMPACTED_TOPIC_CONFIGS} == COMPACTED_TOPIC_CONFIGS
    assert cfg[old_compacted]["retention.ms"] == "3600000"  # other overrides are kept


def test_ensure_topics_creates_a_missing_compacted_topic_with_the_configs(
    kafka_broker, fresh_topic
):
    missing = f"{fresh_topic()}.embeddings"
    settings = kafka_broker.settings.replace("topics", item_embeddings=missing)
    admin = kafka_broker.admin()
    try:
        created = ensure_topics(settings, admin, log=lambda _m: None)
        assert created == [missing]
        cfg = _topic_configs(kafka_broker, [missing])[missing]
        assert {k: cfg[k] for k in COMPACTED_TOPIC_CONFIGS} == COMPACTED_TOPIC_CONFIGS
    finally:
        admin.delete_topics([missing], raise_errors=False)
        admin.close()


def _read_from_beginning(broker: KafkaBroker, topic: str) -> list:
    """Every record of ``topic`` now, from its first offset to its end offset."""
    consumer = broker.consumer(
        group_id=None, enable_auto_commit=False, fetch_max_bytes=4_000_000,
        max_partition_fetch_bytes=4_000_000,
    )  # fmt: skip
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        records: list = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < end[tp] for tp in parts):
            assert time.monotonic() < deadline, "reading the topic timed out"
            for tp_records in consumer.poll(timeout_ms=500).values():
                records.extend(tp_records)
        return records
    finally:
        consumer.close()


def test_compaction_happens_with_the_compacted_topic_configs(kafka_broker, fresh_topic):
    """A changelog with the compacted topics' configs, but a 1 s segment roll, is compacted
    by the broker within seconds, and the last value of every key survives."""
    configs = {**COMPACTED_TOPIC_CONFIGS, "segment.ms": "1000"}
    topic = fresh_topic(configs=configs)
    keys = [f"item-{k}".encode() for k in range(50)]
    written = 0
    latest: dict[bytes, bytes] = {}
    producer = kafka_broker.producer(acks="all", linger_ms=5)
    try:
        # 20,000 records in 5 batches a little more than segment.ms apart, so each batch
        # (the first record of which rolls the previous segment) lands in its own segment.
        for batch in range(5):
            for i in range(4_000):
                key = keys[i % len(keys)]
                latest[key] = f"batch {batch} record {i}".encode()
                producer.send(topic, key=key, value=latest[key])
                written += 1
            producer.flush(timeout=30)
            time.sleep(1.2)
        # The last values, in a small segment of their own: the active segment is never
        # cleaned, so what is left to read is about one record per key in the cleaned
        # segments plus these.
        for key in keys:
            latest[key] = b"final " + key
            producer.send(topic, key=key, value=latest[key])
            written += 1
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)

    records: list = []

    def compacted() -> bool:
        nonlocal records
        records = _read_from_beginning(kafka_broker, topic)
        return len(records) < 0.25 * written

    started = time.monotonic()
    wait_until(compacted, 60, interval_s=1)
    took = time.monotonic() - started
    assert len(records) < 0.25 * written, (
        f"{len(records)} of {written} records still there after {took:.0f}s: not compacted"
    )
    seen: dict[bytes, bytes] = {}
    for r in sorted(records, key=lambda r: r.offset):
        seen[r.key] = r.value
    assert seen == latest
    offsets = [r.offset for r in records]
    assert offsets == sorted(offsets) and offsets[-1] == written - 1  # offsets are kept


# --------------------------------------------------------------------------- lifecycle (CLI)


@dataclass
class CliBroker:
    settings: Settings
    overrides: list[str]
    state_dir: Path

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        sets = [a for o in self.overrides for a in ("--set", o)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_KAFKA_")}
        return subprocess.run(
            [sys.executable, "-m", "freshrec.kafka", *sets, *command],
            capture_output=True, text=True, timeout=240, cwd=REPO_ROOT, env=env, check=False,
        )  # fmt: skip

    def pid(self) -> int:
        return int((self.state_dir / "broker.pid").read_text())

    def as_broker(self) -> KafkaBroker:
        from devstack.kafka_broker import BrokerInfo

        bootstrap = self.settings.kafka.bootstrap_servers
        info = BrokerInfo(self.pid(), bootstrap, self.state_dir, self.state_dir, True, 0.0)
        return KafkaBroker(self.settings, bootstrap, info)


@pytest.fixture(scope="module")
def cli_broker(tmp_path_factory) -> Iterator[CliBroker]:
    state = tmp_path_factory.mktemp("cli-kafka-state")
    overrides = local_broker_overrides(state)
    settings = load_settings(overrides=overrides)
    try:
        yield CliBroker(settings, overrides, state)
    finally:
        broker_down(settings, log=lambda _m: None)


def _wait_gone(pid: int, timeout_s: float = 15.0) -> None:
    assert wait_until(lambda: not cmdline(pid), timeout_s, interval_s=0.05), \
        f"process {pid} still running"


def test_up_twice_is_safe(cli_broker):
    first = cli_broker.run("up")
    assert first.returncode == 0, first.stderr
    pid = cli_broker.pid()
    second = cli_broker.run("up")
    assert second.returncode == 0, second.stderr
    assert f"already running (pid {pid})" in second.stdout
    assert cli_broker.pid() == pid
    status = cli_broker.run("status")
    assert status.returncode == 0
    assert f"running (pid {pid})" in status.stdout
    for name, configs in default_topics(cli_broker.settings).items():
        line = next(ln for ln in status.stdout.splitlines() if ln.split()[:1] == [name])
        assert f"{cli_broker.settings.topics.partitions} partition(s)" in line
        for k, v in configs.items():
            assert f"{k}={v}" in line


def test_up_after_broker_killed_with_sigkill(cli_broker):
    assert cli_broker.run("up").returncode == 0
    broker = cli_broker.as_broker()
    topic = cli_broker.settings.topics.events
    [(partition, offset)] = _produce(broker, topic, [(b"user-k", b"before the crash", [])])

    os.kill(broker.info.pid, signal.SIGKILL)
    _wait_gone(broker.info.pid)
    assert (cli_broker.state_dir / "broker.pid").exists()  # the stale pid file is left behind

    status = cli_broker.run("status")
    assert status.returncode == 3
    assert "stopped" in status.stdout and "stale pid file" in status.stdout

    again = cli_broker.run("up")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "stale pid file" in again.stdout
    new_pid = cli_broker.pid()
    assert new_pid != broker.info.pid
    # The restarted broker serves the data written before the kill.
    records = _consume_all(cli_broker.as_broker(), topic, expected=offset + 1)
    assert records[(partition, offset)].value == b"before the crash"


def test_pid_file_naming_another_program_is_stale(cli_broker):
    cli_broker.run("down")
    other = subprocess.Popen(["sleep", "120"])
    try:
        (cli_broker.state_dir / "broker.pid").write_text(f"{other.pid}\n")
        status = cli_broker.run("status")
        assert status.returncode == 3
        assert "another program" in status.stdout
        down = cli_broker.run("down")
        assert "was not running" in down.stdout
        assert other.poll() is None  # never signalled
        (cli_broker.state_dir / "broker.pid").write_text(f"{other.pid}\n")
        up = cli_broker.run("up")
        assert up.returncode == 0, up.stdout + up.stderr
        assert cli_broker.pid() != other.pid
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_down_then_status_says_stopped(cli_broker):
    assert cli_broker.run("up").returncode == 0
    pid = cli_broker.pid()
    down = cli_broker.run("down")
    assert down.returncode == 0
    assert f"stopped (pid {pid})" in down.stdout
    _wait_gone(pid, timeout_s=2)
    assert not (cli_broker.state_dir / "broker.pid").exists()
    status = cli_broker.run("status")
    assert status.returncode == 3
    assert status.stdout.startswith("kafka: stopped")
    again = cli_broker.run("down")
    assert again.returncode == 0 and "was not running" in again.stdout
    # Nothing answers on the port any more.
    with pytest.raises(Exception):  # noqa: B017 - kafka-python's NoBrokersAvailable & co.
        kafka_config.admin_client(cli_broker.settings, bootstrap_timeout_ms=1500).close()
