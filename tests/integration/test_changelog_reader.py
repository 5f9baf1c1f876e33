"""A restored user-update's read of the item changelog (``flink_jobs.changelog_reader``)
against a real broker: each key's newest committed record, from every partition."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from flink_jobs.changelog_reader import ChangelogUnreadable, read_latest
from freshrec_common import kafka_config


def test_the_newest_record_of_each_key_from_every_partition(
        kafka_broker: Any, fresh_topic: Callable[..., str]) -> None:
    topic = fresh_topic(partitions=3)
    producer = kafka_config.producer(kafka_broker.settings, acks="all")
    try:
        for version in range(3):
            for item in range(20):
                key = f"item-{item}".encode()
                producer.send(topic, key=key, value=f"{item}@{version}".encode(),
                              partition=item % 3)
        producer.send(topic, key=b"item-7", value=None, partition=1)  # deleted
        producer.flush()
    finally:
        producer.close()
    latest = read_latest(kafka_broker.settings, topic, timeout_s=60)
    got = {r.key: r.value for r in latest}
    assert len(latest) == 20 == len(got)
    assert got[b"item-7"] is None
    assert all(got[f"item-{i}".encode()] == f"{i}@2".encode() for i in range(20) if i != 7)
    for partition in range(3):  # per partition in the order the newest records were written
        offsets = [r.offset for r in latest if r.partition == partition]
        assert offsets == sorted(offsets) and offsets


def test_records_of_an_aborted_transaction_are_not_read(
        kafka_broker: Any, fresh_topic: Callable[..., str]) -> None:
    topic = fresh_topic(partitions=1)
    producer = kafka_config.producer(kafka_broker.settings, acks="all",
                                     transactional_id=f"{topic}-tx")
    try:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(topic, key=b"a", value=b"committed")
        producer.commit_transaction()
        producer.begin_transaction()
        producer.send(topic, key=b"a", value=b"aborted")
        producer.send(topic, key=b"b", value=b"aborted")
        producer.flush()
        producer.abort_transaction()
    finally:
        producer.close()
    assert {r.key: r.value for r in read_latest(kafka_broker.settings, topic, 60)} == {
        b"a": b"committed"}


def test_a_missing_topic_is_named(kafka_broker: Any) -> None:
    with pytest.raises(ChangelogUnreadable, match="no-such-changelog"):
        read_latest(kafka_broker.settings, "no-such-changelog", timeout_s=10)
