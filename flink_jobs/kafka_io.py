"""Kafka sources and sinks of the job, built from settings.

Records cross the Java/Python boundary as raw bytes: a small Java glue jar
(``flink_jobs.glue``) turns each Kafka record into
Row(topic, partition, offset, timestamp, key, value) so that no record, null or not UTF-8,
can fail the source, and writes Row(key, value) rows back (a null value is a tombstone).
"""

from __future__ import annotations

from pyflink.common import Types
from pyflink.common.typeinfo import TypeInformation
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetResetStrategy,
    KafkaOffsetsInitializer,
    KafkaSink,
    KafkaSource,
)
from pyflink.java_gateway import get_gateway

from freshrec_common.kafka_config import java_client_properties
from freshrec_common.settings import Settings

# Row(topic, partition, offset, timestamp, key, value) made by RecordWithMetadataDeserializer.
RAW_RECORD_TYPE: TypeInformation = Types.ROW_NAMED(
    ["topic", "partition", "offset", "timestamp", "key", "value"],
    [Types.STRING(), Types.INT(), Types.LONG(), Types.LONG(),
     Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.PRIMITIVE_ARRAY(Types.BYTE())],
)
# Row(key, value) consumed by KeyedBytesSerializer.
KEYED_BYTES_TYPE: TypeInformation = Types.ROW_NAMED(
    ["key", "value"], [Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.PRIMITIVE_ARRAY(Types.BYTE())]
)


def _client_properties(settings: Settings) -> dict[str, str]:
    props = java_client_properties(settings)
    props.pop("bootstrap.servers")  # set through the builders
    return props


def _starting_offsets(mode: str) -> KafkaOffsetsInitializer:
    if mode == "earliest":
        return KafkaOffsetsInitializer.earliest()
    if mode == "latest":
        return KafkaOffsetsInitializer.latest()
    return KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST)


def raw_source(
    settings: Settings, topic: str, group_id: str, starting_offsets: str, bounded: bool = False
) -> KafkaSource:
    """A KafkaSource of RAW_RECORD_TYPE rows; ``bounded`` stops at the offsets seen at start."""
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(settings.kafka.bootstrap_servers)
        .set_topics(topic)
        .set_group_id(group_id)
        .set_starting_offsets(_starting_offsets(starting_offsets))
        .set_properties(_client_properties(settings))
        # Our own exactly-once output (the item changelog) must be read committed-only.
        .set_property("isolation.level", "read_committed")
        # New partitions of the events topic are picked up without a restart.
        .set_property("partition.discovery.interval.ms", "30000")
    )
    if bounded:
        builder.set_bounded(KafkaOffsetsInitializer.latest())
    jvm = get_gateway().jvm
    builder._j_builder.setDeserializer(jvm.io.freshrec.flink.RecordWithMetadataDeserializer())
    return builder.build()


def keyed_bytes_sink(settings: Settings, topic: str, name: str,
                     max_request_bytes: int | None = None) -> KafkaSink:
    """A KafkaSink of KEYED_BYTES_TYPE rows, with the delivery guarantee from settings.

    ``max_request_bytes`` raises the producer's record size limit (the dead letters).
    """
    exactly_once = settings.job.delivery == "exactly-once"
    builder = (
        KafkaSink.builder()
        .set_bootstrap_servers(settings.kafka.bootstrap_servers)
        .set_delivery_guarantee(
            DeliveryGuarantee.EXACTLY_ONCE if exactly_once else DeliveryGuarantee.AT_LEAST_ONCE
        )
    )
    for key, value in _client_properties(settings).items():
        builder.set_property(key, value)
    builder.set_property("linger.ms", "5")
    if max_request_bytes is not None:
        builder.set_property("max.request.size", str(max_request_bytes))
    if exactly_once:
        # Stable per job and sink, so lingering transactions are aborted after a restart.
        builder.set_transactional_id_prefix(f"{settings.job.group_id}-{name}")
        builder.set_property("transaction.timeout.ms", str(settings.job.transaction_timeout_ms))
    jvm = get_gateway().jvm
    builder._j_builder.setRecordSerializer(jvm.io.freshrec.flink.KeyedBytesSerializer(topic))
    return builder.build()
