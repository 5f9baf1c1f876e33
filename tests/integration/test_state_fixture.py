"""The job restores a checkpoint written by an earlier version of its state layout.

``fixtures/state-fv2`` holds a retained checkpoint of the bundled job (user values ``FV2``,
items ``FI2``, owed refreshes ``FD1``; hashmap backend, parallelism 1, 4 shards each, keyed
by ``flink_jobs.shard_keys``) taken
after the storefront scenario of ``test_job`` (catalogue, tastes), with ``meta.json``: the
Kafka offsets the checkpoint had reached and each user's count and seq. A later layout must
keep restoring it (or say in docs/operations.md why not and replace the fixture).

Regenerate it (same Flink version; replaces the files)::

    FRESHREC_WRITE_STATE_FIXTURE=1 .venv/bin/python -m pytest \\
        tests/integration/test_state_fixture.py

Regenerating writes the current layout (``FV3`` user values since the fixture was made):
keep this one for the layout it holds, and give a new layout's fixture a directory of its
own. Flink keeps absolute paths of state files in ``_metadata``, so the checkpoint is
restored from the path it was written to (``CHECKPOINT_ROOT``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from freshrec_common import kafka_config
from freshrec_common.polling import wait_until
from schemas.recommendation import Recommendation
from tests.integration.job_harness import JobProcess, job_settings, latest_by_key
from tests.integration.shop import shop_tastes, users, view_once_more

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIXTURE = Path(__file__).parent / "fixtures" / "state-fv2"
CHECKPOINT_ROOT = Path("/tmp/freshrec-state-fixture-fv2")
TAG = "state-fv2"
SETTINGS = ["model.top_k=20", "model.exploration=0.0", "job.parallelism=1",
            "job.user_shards=4", "job.item_shards=4",
            "job.state_backend=hashmap", f"job.checkpoint_dir={CHECKPOINT_ROOT}"]


def _end_offsets(job: JobProcess, topic: str) -> dict[int, int]:
    from kafka import TopicPartition

    consumer = kafka_config.consumer(job.settings)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return {tp.partition: off for tp, off in consumer.end_offsets(parts).items()}
    finally:
        consumer.close()


def write_fixture(kafka_broker, tmp_path: Path) -> None:
    shutil.rmtree(CHECKPOINT_ROOT, ignore_errors=True)
    settings, overrides = job_settings(kafka_broker.settings, tmp_path, SETTINGS, tag=TAG)
    topics = settings.topics
    job = JobProcess(settings, overrides, tmp_path / "job.log").start()
    try:
        records, counts = shop_tastes(job)
        time.sleep(3.0)  # background item publishes and a checkpoint after them
        job.wait_for_checkpoint()
        first = job.completed_checkpoint()
        assert wait_until(lambda: job.completed_checkpoint() >= first + 2, 60, interval_s=0.5), \
            f"checkpoint {first + 2} not completed in 60 s\n{job.log_tail()}"
        meta = {
            "events": _end_offsets(job, topics.events),
            "item_embeddings": _end_offsets(job, topics.item_embeddings),
            "users": {u: {"events_applied": counts[u], "seq": Recommendation.from_json(
                latest_by_key(records)[u].value).seq} for u, _ in users()},
        }
    finally:
        job.stop()
    newest = max(CHECKPOINT_ROOT.glob("*/chk-*/_metadata"), key=lambda p: p.stat().st_mtime)
    shutil.rmtree(FIXTURE, ignore_errors=True)
    FIXTURE.mkdir(parents=True)
    meta["checkpoint"] = str(newest.parent.relative_to(CHECKPOINT_ROOT))
    shutil.copytree(newest.parent, FIXTURE / "checkpoint")
    (FIXTURE / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def _pad(job: JobProcess, topic: str, offsets: dict[str, int], value: bytes | None) -> None:
    """Fill each partition up to the offset the checkpoint reached (the job resumes there)."""
    producer = kafka_config.producer(job.settings, acks="all")
    for partition, end in offsets.items():
        for _ in range(end):
            producer.send(topic, key=b"pad", value=value, partition=int(partition))
    producer.flush(timeout=30)
    producer.close()


def test_job_restores_the_state_fixture(kafka_broker, tmp_path: Path) -> None:
    if os.environ.get("FRESHREC_WRITE_STATE_FIXTURE"):
        write_fixture(kafka_broker, tmp_path)
        pytest.skip(f"wrote {FIXTURE}")
    meta = json.loads((FIXTURE / "meta.json").read_text())
    restore = CHECKPOINT_ROOT / meta["checkpoint"]
    shutil.rmtree(CHECKPOINT_ROOT, ignore_errors=True)
    shutil.copytree(FIXTURE / "checkpoint", restore)
    settings, overrides = job_settings(kafka_broker.settings, tmp_path, SETTINGS, tag=TAG)
    topics = settings.topics
    job = JobProcess(settings, [*overrides, f"job.restore_from={restore}"],
                     tmp_path / "job.log")
    # The restored sources resume at these offsets: the records below them are never read,
    # so the item replica can only come from the restored broadcast state.
    _pad(job, topics.events, meta["events"], b"not read")
    _pad(job, topics.item_embeddings, meta["item_embeddings"], None)
    job.start()
    try:
        records = view_once_more(job, {
            u: meta["users"][u]["events_applied"] + 1 for u, _ in users()})
        for user, category in users():
            rec = Recommendation.from_json(latest_by_key(records)[user].value)
            assert rec.seq == meta["users"][user]["seq"] + 1, (user, rec.seq)
            top10 = [it.item_id for it in rec.items[:10]]
            assert sum(i.startswith(category) for i in top10) >= 5, (user, top10)
        assert not job.read_topic(topics.dlq), "records below the restored offsets were read"
        job.assert_alive()
    finally:
        job.stop()
        shutil.rmtree(CHECKPOINT_ROOT, ignore_errors=True)
