"""The item changelog read straight from Kafka: how a restored user-update refills its replica.

The replica is a cache of the compacted changelog topic, not Flink state: checkpointing it
as broadcast state wrote the whole catalogue, per subtask, at every checkpoint. After a
restore the changelog source resumes at its checkpointed offsets, so the records before
them are read here, from the start of the topic to its end when the read begins (read
committed: the changelog is transactional in exactly-once mode). Only each item's newest
record is kept; the source then re-delivers what came after its offsets, older versions
first, newest last.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from flink_jobs.bundles import RawRecord

if TYPE_CHECKING:
    from freshrec_common.settings import Settings


class ChangelogUnreadable(RuntimeError):
    """The changelog topic could not be read to its end in time."""


def read_latest(settings: Settings, topic: str, timeout_s: float = 120.0) -> list[RawRecord]:
    """Each key's newest record in ``topic``, from its start to the end offsets taken when
    called, by partition and offset. Tombstones are kept
    (a deleted item stays deleted). Raises :class:`ChangelogUnreadable` naming the topic
    when the end is not reached within ``timeout_s``."""
    from kafka import TopicPartition

    from freshrec_common import kafka_config

    consumer = kafka_config.consumer(
        settings, enable_auto_commit=False, isolation_level="read_committed",
        auto_offset_reset="earliest", max_partition_fetch_bytes=8 * 1024 * 1024,
        client_id="freshrec-replica-restore")
    try:
        found = consumer.partitions_for_topic(topic)
        if not found:
            raise ChangelogUnreadable(f"item changelog topic {topic!r} has no partitions")
        parts = [TopicPartition(topic, p) for p in sorted(found)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        newest: dict[bytes | None, Any] = {}  # key -> its newest ConsumerRecord
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in parts):
            if time.monotonic() > deadline:
                behind = {tp.partition: end[tp] - consumer.position(tp) for tp in parts}
                raise ChangelogUnreadable(
                    f"item changelog topic {topic!r} not read to its end in {timeout_s:.0f} s "
                    f"(records left per partition: {behind})")
            for records in consumer.poll(timeout_ms=500, max_records=50_000).values():
                for r in records:
                    newest[r.key] = r
        kept = sorted(newest.values(), key=lambda r: (r.partition, r.offset))
        return [RawRecord(r.partition, r.offset, r.timestamp, r.key, r.value) for r in kept]
    finally:
        consumer.close()
