"""The two comparison pipelines of the end-to-end benchmark (:mod:`bench.bench_e2e`), each
run in a child process on a Flink MiniCluster as ``python -c "from bench import
e2e_pipelines; ..." --set ...``:

* ``identity``: the job's Kafka source, a per-record parse (with its DLQ sink),
  ``key_by(user)`` and Kafka sink, with a trivial keyed model that emits one recommendation
  v1 record per event (its only state is a per-user counter): the per-record data flow's
  floor (one Python call per record for parse and for the keyed model);
* ``passthrough``: the same Kafka source and sink with a Java map between them and no Python
  at all: the ceiling of this machine.

The child imports this module (``from bench import e2e_pipelines``), so that the UDFs below
are pickled by reference (not by value from ``__main__``) and imported by Flink's embedded
interpreter like the job's own operators.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import KeyedProcessFunction, OutputTag, ProcessFunction
from pyflink.datastream.state import ValueStateDescriptor

# Imported here, not lazily: whichever Flink task opens first then loads torch/river/scipy.
# A pybind11 extension (scipy.spatial) first imported from another task's thread deadlocks
# in PyGILState_Ensure under pemja (seen when only the parse task imported them).
from flink_jobs.kafka_io import KEYED_BYTES_TYPE
from flink_jobs.user_side_types import now_ms
from schemas.dlq import DeadLetter, encode_dead_letter
from schemas.event_fields import DecodeError
from schemas.events import decode_event
from schemas.recommendation import Recommendation, ScoredItem


class IdentityModel(KeyedProcessFunction):
    """One recommendation v1 list per event: the event's own item, seq = per-user count."""

    def open(self, runtime_context: Any) -> None:
        self.count = runtime_context.get_state(ValueStateDescriptor("count", Types.LONG()))

    def process_element(self, msg: Any, ctx: Any) -> Any:
        event = _event_of(msg)
        n = (self.count.value() or 0) + 1
        self.count.update(n)
        rec = Recommendation(
            user_id=event.user_id, items=(ScoredItem(event.item_id or "", 1.0, "identity"),),
            model_version="identity", generated_at=int(time.time() * 1000),
            last_event_ts=event.ts_ms, last_event_id=event.event_id, seq=n, events_applied=n,
        )
        yield Row(event.user_id.encode(), rec.to_bytes())


DLQ_TAG = OutputTag("dead-letters", KEYED_BYTES_TYPE)


class IdentityParse(ProcessFunction):
    """Per-record decode and validation (the per-record job's parse step): valid user events
    leave as ``(event, kafka_timestamp)``, invalid ones go to the DLQ side output."""

    def __init__(self, max_payload_bytes: int, max_id_length: int, topic: str) -> None:
        self.max_payload_bytes, self.max_id_length = max_payload_bytes, max_id_length
        self.topic = topic

    def process_element(self, row: Any, ctx: Any) -> Any:
        result = decode_event(row[5], self.max_payload_bytes, self.max_id_length)
        if isinstance(result, DecodeError):
            dead = DeadLetter.build(row[5], row[4], result.code, result.field, result.message,
                                    self.topic, row[1], row[2], now_ms())
            yield DLQ_TAG, Row(row[4], encode_dead_letter(dead))
        elif result.user_id is not None:
            yield result, row[3]


def _event_of(msg: Any) -> Any:
    return msg[0]


def user_key(msg: Any) -> str:
    return _event_of(msg).user_id


def _pipeline_source(argv: list[str], prog: str) -> tuple[Any, Any, Any]:
    """Settings from ``--set`` arguments, an environment with the job's jars, and the job's
    raw Kafka source on it: what the comparison pipelines share with the job."""
    from pyflink.common import WatermarkStrategy

    from flink_jobs import kafka_io
    from flink_jobs.environment import make_environment
    from flink_jobs.recommender_job import job_jars
    from freshrec_common.settings import load_settings
    from freshrec_common.settings_args import add_settings_arguments

    parser = argparse.ArgumentParser(prog=prog)
    add_settings_arguments(parser)
    args = parser.parse_args(argv)
    settings = load_settings(args.config, overrides=args.overrides)
    job = settings.job
    env = make_environment(settings, job_jars(settings))
    raw = env.from_source(
        kafka_io.raw_source(settings, settings.topics.events, job.group_id,
                            job.starting_offsets),
        WatermarkStrategy.no_watermarks(), "kafka-events", kafka_io.RAW_RECORD_TYPE,
    ).uid("source-events")
    return settings, env, raw


def identity_main(argv: list[str]) -> int:
    """The identity pipeline: same source, parse, key_by and sinks; a trivial model."""
    from flink_jobs import kafka_io

    settings, env, raw = _pipeline_source(argv, "bench.e2e_pipelines identity")
    job, topics = settings.job, settings.topics
    # The UDFs above are pickled by reference to this module: ship it to the workers.
    env.add_python_file(str(Path(__file__).resolve()))
    parsed = (raw.process(IdentityParse(job.max_payload_bytes, job.max_id_length, topics.events))
              .name("parse-validate").uid("parse-validate"))
    parsed.get_side_output(DLQ_TAG).sink_to(
        kafka_io.keyed_bytes_sink(settings, topics.dlq, "dlq")).name("sink-dlq").uid("sink-dlq")
    (parsed.key_by(user_key, Types.STRING())
     .process(IdentityModel(), kafka_io.KEYED_BYTES_TYPE).name("identity-model")
     .uid("identity-model")
     .sink_to(kafka_io.keyed_bytes_sink(settings, topics.recommendations, "recs"))
     .name("sink-recommendations").uid("sink-recommendations"))
    env.execute("freshrec-identity")
    return 0


def passthrough_main(argv: list[str]) -> int:
    """The Java-only ceiling: Kafka source -> Row(key, value) (Java) -> Kafka sink."""
    from pyflink.datastream import DataStream
    from pyflink.java_gateway import get_gateway

    from flink_jobs import kafka_io

    settings, env, raw = _pipeline_source(argv, "bench.e2e_pipelines passthrough")
    keyed = DataStream(raw._j_data_stream.map(
        get_gateway().jvm.io.freshrec.flink.RawToKeyedBytes())).name("to-keyed-bytes")
    (keyed.sink_to(kafka_io.keyed_bytes_sink(settings, settings.topics.recommendations, "recs"))
     .name("sink-recommendations").uid("sink-recommendations"))
    env.execute("freshrec-passthrough")
    return 0
