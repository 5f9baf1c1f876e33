"""The freshrec job: Kafka events in, fresh top-K recommendations out.

``build_pipeline(env, settings)`` wires the operators; ``main()`` runs it. Sources and sinks
come from settings (``JobIO``), so tests can bound the sources.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyflink.common import Types, WatermarkStrategy
from pyflink.common.typeinfo import TypeInformation
from pyflink.datastream import DataStream, StreamExecutionEnvironment
from pyflink.datastream.connectors.kafka import KafkaSink, KafkaSource
from pyflink.java_gateway import get_gateway

from flink_jobs import kafka_io
from flink_jobs.bundles import DEAD_LETTERS, ITEM_EMBEDDINGS, ITEM_GRADIENTS, RECOMMENDATIONS
from flink_jobs.environment import make_environment
from flink_jobs.glue import build_glue_jar
from flink_jobs.operators import (
    ITEMS_DESCRIPTOR,
    OUTPUT_TYPE,
    SHARD_BUNDLE_TYPE,
    ChangelogTopic,
    ItemUpdate,
    UserUpdate,
)
from flink_jobs.shard_keys import shard_keys
from flink_jobs.user_side_types import UserSideSettings
from freshrec_common.jars import jar_paths
from freshrec_common.privacy import load_key
from freshrec_common.settings import Settings, load_settings
from freshrec_common.settings_args import add_settings_arguments
from online_models.config import ModelConfig
from online_models.experiments import Experiment

MODEL_NAME = "freshrec-fpmc"
JOB_NAME = "freshrec"


@dataclass(frozen=True)
class JobIO:
    """The job's sources and sinks; tests may bound the sources."""

    events: KafkaSource
    item_changelog: KafkaSource
    recommendations: KafkaSink
    item_embeddings: KafkaSink
    dead_letters: KafkaSink


def kafka_io_from_settings(settings: Settings, bounded: bool = False) -> JobIO:
    topics, job = settings.topics, settings.job
    return JobIO(
        events=kafka_io.raw_source(settings, topics.events, job.group_id, job.starting_offsets,
                                   bounded=bounded),
        # Without a checkpoint the compacted changelog is read from the start: it builds
        # every item replica (a restored job resumes at its offsets, replica in state).
        item_changelog=kafka_io.raw_source(settings, topics.item_embeddings,
                                           f"{job.group_id}-items", "earliest"),
        recommendations=kafka_io.keyed_bytes_sink(settings, topics.recommendations, "recs"),
        item_embeddings=kafka_io.keyed_bytes_sink(settings, topics.item_embeddings, "items"),
        dead_letters=kafka_io.keyed_bytes_sink(settings, topics.dlq, "dlq",
                                               topics.dlq_max_message_bytes),
    )


def model_version(config: ModelConfig) -> str:
    return f"{MODEL_NAME}-d{config.dim}"


def java_operator(stream: DataStream, name: str, operator: Any,
                  output_type: TypeInformation) -> DataStream:
    """Apply one of the glue jar's Java operators (``flink_jobs/java``) to a stream."""
    return DataStream(stream._j_data_stream.transform(
        name, output_type.get_java_type_info(), operator)).name(name).uid(name)


def build_pipeline(env: StreamExecutionEnvironment, settings: Settings, io: JobIO) -> None:
    """Add the freshrec dataflow to ``env``; every operator has a stable uid.

    Java gathers records into bundles and splits Python's output into records; Python is
    called once per bundle (``flink_jobs.bundles``)."""
    job = settings.job
    config = settings.model
    glue = get_gateway().jvm.io.freshrec.flink
    max_records, max_age = job.bundle_max_records, job.bundle_max_age_ms

    raw = env.from_source(io.events, WatermarkStrategy.no_watermarks(), "kafka-events",
                          kafka_io.RAW_RECORD_TYPE).uid("source-events")
    # Keyed by keys that spread the shards evenly over the subtasks (flink_jobs.shard_keys).
    user_keys, item_keys = shard_keys(job.user_shards), shard_keys(job.item_shards)
    gateway = get_gateway()
    j_user_keys = gateway.new_array(gateway.jvm.int, len(user_keys))
    for shard, key in enumerate(user_keys):
        j_user_keys[shard] = key
    # Sharded by a hash of the user id read from the event itself, whatever the Kafka key,
    # one bundle for all shards of a user-update subtask; a marker before each barrier for
    # every shard, at which user-update keeps its score blends in the shard's state (and
    # scores its owed lists: exactly-once ones then commit with the events they reflect).
    events = java_operator(raw, "bundle-events", glue.RecordBundler(
        "user_id", job.user_shards, max_records, max_age, job.max_payload_bytes,
        True, False, j_user_keys, False), SHARD_BUNDLE_TYPE)
    changelog = env.from_source(
        io.item_changelog, WatermarkStrategy.no_watermarks(), "kafka-item-embeddings",
        kafka_io.RAW_RECORD_TYPE).uid("source-item-embeddings")
    # The changelog's and the item messages' bundlers keep what they are building across a
    # barrier (in operator state), so user-update and item-update need not apply it first:
    # their barriers, and with them the exactly-once commits, come sooner.
    # The changelog's records reach the replicas in their stored layout (FR1), packed in Java.
    replica_feed = java_operator(changelog, "bundle-item-embeddings", glue.RecordBundler(
        "", 1, max_records, max_age, 0, False, True, None, True), SHARD_BUNDLE_TYPE).broadcast(
        ITEMS_DESCRIPTOR)

    key_file = None
    if settings.privacy.pseudonymize_users:
        load_key(settings.privacy.key_file)  # fail at submission, naming what is missing
        key_file = settings.privacy.key_file
    user_side = UserSideSettings(
        config=config, model_version=model_version(config), events_topic=settings.topics.events,
        refresh_interval_ms=job.refresh_interval_ms, dedup_window_s=job.dedup_window_s,
        dedup_max_ids=job.dedup_max_ids, max_payload_bytes=job.max_payload_bytes,
        max_id_length=job.max_id_length, item_shards=job.item_shards,
        learn_items=job.learn_items,
        # Read at submission: a bad file fails the start, naming the variant and key.
        experiment=(Experiment.load(settings.experiments.file) if settings.experiments.file
                    else None))
    users = (
        events.key_by(lambda bundle, keys=user_keys: keys[bundle[0]], Types.INT())
        .connect(replica_feed)
        .process(UserUpdate(user_side, job.user_state_ttl_days, job.user_shards,
                            job.state_cache_entries,
                            ChangelogTopic(settings, settings.topics.item_embeddings), key_file),
                 OUTPUT_TYPE)
        .name("user-update").uid("user-update")
    )
    java_operator(users, "split-dead-letters", glue.KeyedRecordSplitter(DEAD_LETTERS),
                  kafka_io.KEYED_BYTES_TYPE).sink_to(io.dead_letters).name("sink-dlq").uid(
        "sink-dlq")
    java_operator(users, "split-recommendations", glue.KeyedRecordSplitter(RECOMMENDATIONS),
                  kafka_io.KEYED_BYTES_TYPE).sink_to(io.recommendations).name(
        "sink-recommendations").uid("sink-recommendations")

    # A new chain: at most one Python operator per task. A second one (the key selector)
    # chained behind user-update gives its thread a second pemja thread state, and torch's
    # first call there waits for the GIL for good (see flink_jobs.native_imports).
    item_messages = java_operator(
        java_operator(users, "split-item-messages", glue.ShardRecordSplitter(ITEM_GRADIENTS),
                      SHARD_BUNDLE_TYPE),
        "bundle-item-messages",
        glue.ShardRecordBundler(max_records, job.item_bundle_max_age_ms, job.item_shards),
        SHARD_BUNDLE_TYPE).start_new_chain()
    items = (
        item_messages.key_by(lambda bundle, keys=item_keys: keys[bundle[0]], Types.INT())
        .process(ItemUpdate(config, job.item_publish_interval_ms,
                            job.item_background_publish_interval_ms, job.dedup_window_s,
                            job.item_shards, job.state_cache_entries),
                 OUTPUT_TYPE)
        .name("item-update").uid("item-update")
    )
    java_operator(items, "split-item-embeddings", glue.KeyedRecordSplitter(ITEM_EMBEDDINGS),
                  kafka_io.KEYED_BYTES_TYPE).sink_to(io.item_embeddings).name(
        "sink-item-embeddings").uid("sink-item-embeddings")


def job_jars(settings: Settings) -> list[Path]:
    """Jars the job needs: the Kafka connector and the glue compiled against it.

    The connector is found by path under ``local.cache_dir``; whoever starts the job fetches
    it first (``freshrec setup``, ``freshrec run``, ``freshrec submit``, the test fixtures)."""
    connector = jar_paths(settings).connector_jar
    if not connector.is_file():
        raise FileNotFoundError(
            f"the Flink Kafka connector {connector} is missing: fetch it once with"
            " `freshrec setup` (Maven)")
    glue = build_glue_jar(connector, Path(settings.local.cache_dir) / "flink")
    return [connector, glue]


def create_job(settings: Settings, io: JobIO | None = None) -> StreamExecutionEnvironment:
    """An environment with the freshrec pipeline built on it, ready to execute."""
    env = make_environment(settings, job_jars(settings))
    build_pipeline(env, settings, io or kafka_io_from_settings(settings))
    return env


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job (blocking) with settings from ``--config`` / env / ``--set``."""
    parser = argparse.ArgumentParser(prog="freshrec-job", description=__doc__)
    add_settings_arguments(parser)
    args = parser.parse_args(argv)
    settings = load_settings(args.config, overrides=args.overrides)
    create_job(settings).execute(JOB_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
