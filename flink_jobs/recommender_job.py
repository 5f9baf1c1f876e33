"""The freshrec job: Kafka events in, fresh top-K recommendations out (DESIGN.md §1).

``build_pipeline(env, settings)`` wires the operators; ``main()`` runs it. Sources and sinks
come from settings (``JobIO``), so tests can bound the sources.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pyflink.common import Types, WatermarkStrategy
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.datastream.connectors.kafka import KafkaSink, KafkaSource

from flink_jobs import kafka_io
from flink_jobs.environment import make_environment
from flink_jobs.glue import build_glue_jar
from flink_jobs.operators import (
    DLQ_TAG,
    ITEM_GRADIENT_TAG,
    ITEM_UPSERT_TAG,
    ITEMS_DESCRIPTOR,
    ItemUpdate,
    ParseEvents,
    RefreshScorer,
    UserUpdate,
    parse_item_record,
    refresh_shard,
)
from freshrec.privacy import load_key
from freshrec.settings import Settings, load_settings
from online_models.config import ModelConfig

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
        # The compacted changelog is read from the start: it rebuilds every item replica.
        item_changelog=kafka_io.raw_source(settings, topics.item_embeddings,
                                           f"{job.group_id}-items", "earliest"),
        recommendations=kafka_io.keyed_bytes_sink(settings, topics.recommendations, "recs"),
        item_embeddings=kafka_io.keyed_bytes_sink(settings, topics.item_embeddings, "items"),
        dead_letters=kafka_io.keyed_bytes_sink(settings, topics.dlq, "dlq",
                                               topics.dlq_max_message_bytes),
    )


def model_config(settings: Settings) -> ModelConfig:
    return ModelConfig.from_mapping(dataclasses.asdict(settings.model))


def model_version(config: ModelConfig) -> str:
    return f"{MODEL_NAME}-d{config.dim}"


def build_pipeline(env: StreamExecutionEnvironment, settings: Settings, io: JobIO) -> None:
    """Add the freshrec dataflow to ``env``; every operator has a stable uid."""
    job = settings.job
    config = model_config(settings)
    shards = job.refresh_shards

    raw = env.from_source(io.events, WatermarkStrategy.no_watermarks(), "kafka-events",
                          kafka_io.RAW_RECORD_TYPE).uid("source-events")
    key_file = None
    if settings.privacy.pseudonymize_users:
        load_key(settings.privacy.key_file)  # fail at submission, naming what is missing
        key_file = settings.privacy.key_file
    parsed = (
        raw.process(ParseEvents(job.max_payload_bytes, job.max_id_length, key_file))
        .name("parse-validate").uid("parse-validate")
    )
    parsed.get_side_output(DLQ_TAG).sink_to(io.dead_letters).name("sink-dlq").uid("sink-dlq")

    changelog = (
        env.from_source(io.item_changelog, WatermarkStrategy.no_watermarks(),
                        "kafka-item-embeddings", kafka_io.RAW_RECORD_TYPE)
        .uid("source-item-embeddings")
        .map(parse_item_record, Types.PICKLED_BYTE_ARRAY()).name("parse-item-embeddings")
        .uid("parse-item-embeddings")
        .filter(lambda rec: rec is not None).name("skip-tombstones").uid("skip-tombstones")
    )
    replica_feed = changelog.broadcast(ITEMS_DESCRIPTOR)

    users = (
        parsed.key_by(lambda msg: msg[0].user_id, Types.STRING())
        .connect(replica_feed)
        .process(
            UserUpdate(config, job.refresh_interval_ms, job.dedup_window_s, job.dedup_max_ids,
                       job.user_state_ttl_days, job.learn_items),
            Types.PICKLED_BYTE_ARRAY(),
        )
        .name("user-update").uid("user-update")
    )

    item_input = parsed.get_side_output(ITEM_UPSERT_TAG).union(
        users.get_side_output(ITEM_GRADIENT_TAG))
    items = (
        item_input.key_by(lambda msg: msg.item_id, Types.STRING())
        .process(ItemUpdate(config, job.item_publish_interval_ms,
                            job.item_background_publish_interval_ms, job.dedup_window_s),
                 kafka_io.KEYED_BYTES_TYPE)
        .name("item-update").uid("item-update")
    )
    items.sink_to(io.item_embeddings).name("sink-item-embeddings").uid("sink-item-embeddings")

    recommendations = (
        users.key_by(lambda req: refresh_shard(req.user_id, shards), Types.INT())
        .connect(replica_feed)
        .process(
            RefreshScorer(config, model_version(config), job.refresh_batch_delay_ms,
                          job.refresh_max_batch),
            kafka_io.KEYED_BYTES_TYPE,
        )
        .name("refresh-score").uid("refresh-score")
    )
    recommendations.sink_to(io.recommendations).name("sink-recommendations").uid(
        "sink-recommendations")


def job_jars(settings: Settings) -> list[Path]:
    """Jars the job needs: the Kafka connector and the glue compiled against it."""
    from freshrec.local_kafka import ensure_jars

    connector = ensure_jars(settings).connector_jar
    glue = build_glue_jar(connector, Path(settings.local.cache_dir) / "flink")
    return [connector, glue]


def create_job(settings: Settings, io: JobIO | None = None, restart_attempts: int = 3
               ) -> StreamExecutionEnvironment:
    """An environment with the freshrec pipeline built on it, ready to execute."""
    env = make_environment(settings, job_jars(settings), restart_attempts)
    build_pipeline(env, settings, io or kafka_io_from_settings(settings))
    return env


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job (blocking) with settings from ``--config`` / env / ``--set``."""
    parser = argparse.ArgumentParser(prog="freshrec-job", description=__doc__)
    parser.add_argument("--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    settings = load_settings(args.config, overrides=args.overrides)
    create_job(settings).execute(JOB_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
