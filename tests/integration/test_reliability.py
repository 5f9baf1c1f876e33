"""Faults and hostile input against the real job (MiniCluster) and a real broker.

- An injected task failure mid-stream: Flink restores the latest checkpoint and every valid
  event is applied exactly once (per-user ``events_applied``), in both delivery modes; in
  exactly-once mode a read_committed consumer sees each user's versions strictly in order,
  and each item's published interaction count is exact, though its messages wait in their
  bundler across barriers.
- Exactly-once with the item side frozen: a run with a failure ends with the same user
  state (the same lists with the same scores) as an uninterrupted run on the same input.
- The broker stopped and restarted mid-stream (a broker of its own): nothing lost.
- 10,000+ Hypothesis-generated malformed records between valid traffic: no restart, each one
  dead-lettered once with its reason and exact bytes, every valid event applied.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from itertools import pairwise
from pathlib import Path

import pytest

from devstack.kafka_broker import broker_down
from flink_jobs.fault_injection import ENV_VAR
from freshrec_common.settings import Settings
from schemas.dlq import DeadLetter
from schemas.event_fields import DecodeError
from schemas.events import Event, decode_event, encode_event
from schemas.item_embedding import ItemEmbedding
from schemas.recommendation import Recommendation
from tests.integration.job_harness import JobProcess, Record, job_settings, latest_by_key
from tests.integration.shop import (
    BASE_TS,
    CATEGORIES,
    ITEMS_PER_CATEGORY,
    catalogue,
    item_id,
)
from tests.kafka_fixtures import local_broker_settings, start_broker
from tests.malformed import draw_malformed

pytestmark = pytest.mark.slow

N_ITEMS = len(CATEGORIES) * ITEMS_PER_CATEGORY


def storefront_traffic(n_users: int, per_user: int, prefix: str = "rel"
                       ) -> tuple[list[Event], Counter[str]]:
    """Users of four categories taking turns; returns the events and per-user counts."""
    rng = random.Random(7)
    events = []
    for j in range(per_user):
        for u in range(n_users):
            category = CATEGORIES[u % len(CATEGORIES)]
            kind = rng.choices(["view", "click", "add_to_cart", "purchase"], [70, 15, 10, 5])[0]
            events.append(Event(f"{prefix}-{u}-{j}", kind, BASE_TS + 1000 * j + u,
                                user_id=f"{prefix}-user-{u}",
                                item_id=item_id(category, rng.randrange(ITEMS_PER_CATEGORY))))
    return events, Counter(e.user_id for e in events if e.user_id is not None)


def chunks(events: Sequence[Event], size: int) -> Iterator[Sequence[Event]]:
    for start in range(0, len(events), size):
        yield events[start:start + size]


def applied(records: list[Record]) -> dict[str, int]:
    """Each user's events_applied in their latest list."""
    return {user: Recommendation.from_json(rec.value).events_applied
            for user, rec in latest_by_key(records).items() if rec.value is not None}


def item_counts(records: list[Record]) -> dict[str, int]:
    """Each item's n_events in its latest changelog record."""
    return {item: ItemEmbedding.from_bytes(rec.value).n_events
            for item, rec in latest_by_key(records).items() if rec.value is not None}


def reached(counts: Counter[str]) -> object:
    def done(records: list[Record]) -> bool:
        got = applied(records)
        return all(got.get(user) == n for user, n in counts.items())
    return done


def assert_delivered(records: list[Record], counts: Counter[str], exactly_once: bool) -> None:
    """Every produced event applied once; with exactly-once, no version seen twice."""
    got = applied(records)
    assert {u: got.get(u) for u in counts} == dict(counts), "events lost or applied twice"
    if not exactly_once:
        return
    for user in counts:
        history = [Recommendation.from_json(r.value) for r in records
                   if r.key == user.encode() and r.value is not None]
        seqs = [rec.seq for rec in history]
        assert all(a < b for a, b in pairwise(seqs)), (user, seqs)
        applied_seq = [rec.events_applied for rec in history]
        assert applied_seq == sorted(applied_seq), (user, applied_seq)


def start_with_catalogue(settings: Settings, overrides: list[str], log: Path,
                         env: dict[str, str] | None = None) -> JobProcess:
    job = JobProcess(settings, overrides, log, env=env or {}).start()
    job.send_events(catalogue())
    job.wait_for(settings.topics.item_embeddings, lambda rs: len(latest_by_key(rs)) >= N_ITEMS,
                 timeout_s=180, what="the catalogue's item embeddings")
    # A failure before the first checkpoint would restart from scratch, not restore.
    job.wait_for_checkpoint()
    return job


@pytest.mark.parametrize(("delivery", "backend"),
                         [("at-least-once", "hashmap"), ("exactly-once", "rocksdb")])
def test_injected_task_failure_restores_from_checkpoint(kafka_broker, tmp_path: Path,
                                                        delivery: str, backend: str) -> None:
    # Item messages wait up to 3 s in their bundler: across the 2 s checkpoints' barriers, in
    # its operator state, so the restore must send them on exactly once.
    settings, overrides = job_settings(
        kafka_broker.settings, tmp_path,
        ["job.parallelism=2", f"job.delivery={delivery}", f"job.state_backend={backend}",
         "job.item_bundle_max_age_ms=3000"])
    marker = tmp_path / "fault-fired"
    # Each subtask applies ~240 of the 480 events: the first to reach 200 fails, once, after
    # checkpoints taken while item messages waited in their bundler.
    job = start_with_catalogue(settings, overrides, tmp_path / "job.log",
                               env={ENV_VAR: f"200:{marker}"})
    events, counts = storefront_traffic(n_users=16, per_user=30)
    try:
        # Spread over several checkpoint intervals (2 s), so the failure lands mid-stream
        # with completed checkpoints before it.
        for part in chunks(events, 40):
            job.send_events(part)
            time.sleep(0.5)
        records = job.wait_for(settings.topics.recommendations, reached(counts),
                               timeout_s=240, what="every event applied after the failure")
        assert marker.exists(), "the fault was never injected"
        assert job.restarts() >= 1, "Flink did not restart the job after the fault"
        log = "\n".join(job.flink_log_lines())
        assert "injected fault after 200 events" in log
        assert "Restoring job" in log and "from Checkpoint" in log, \
            "the job restarted without restoring a checkpoint"
        assert_delivered(records, counts, exactly_once=delivery == "exactly-once")
        # Every event here is positive: each counts once for its item (at least once when
        # replays may repeat it).
        taken = Counter(e.item_id for e in events if e.item_id is not None)
        if delivery == "exactly-once":
            job.wait_for(settings.topics.item_embeddings,
                                 lambda rs: all(item_counts(rs).get(i) == n
                                                for i, n in taken.items()),
                                 timeout_s=60, what="each item's exact interaction count")
        else:
            job.wait_for(settings.topics.item_embeddings,
                                 lambda rs: all(item_counts(rs).get(i, 0) >= n
                                                for i, n in taken.items()),
                                 timeout_s=60, what="each item's interactions counted")
        job.assert_alive()
    finally:
        job.stop()


def test_a_restore_with_another_shard_count_stops_naming_the_setting(
        kafka_broker, tmp_path: Path) -> None:
    """Users are keyed by ``crc32(user_id) % job.user_shards``: restoring with another count
    would send them to other shards with empty state. The job refuses, naming the setting
    and the count the state was written with."""
    settings, overrides = job_settings(
        kafka_broker.settings, tmp_path, ["job.user_shards=4", "job.item_shards=4"])
    job = start_with_catalogue(settings, overrides, tmp_path / "first.log")
    events, _ = storefront_traffic(n_users=8, per_user=4)
    try:
        job.send_events(events[:16])
        job.wait_for_checkpoint()
    finally:
        job.stop()
    # No restarts: the guard's failure is the same at every attempt.
    again = JobProcess(settings, [*overrides, "job.user_shards=2", "job.restore_from=latest",
                                  "job.restart_attempts=0"], tmp_path / "second.log").start()
    try:
        again.send_events(events[16:])
        assert again.proc is not None
        again.proc.wait(timeout=180)
        log = "\n".join([again.log_path.read_text("utf-8", "replace"),
                         *again.flink_log_lines()])
        assert ("job.user_shards is 2, but the restored state was written with 4 shards"
                in log), again.log_tail()
        assert "--set job.user_shards=4" in log
        assert again.proc.returncode != 0
        assert again.restarts() == 0, "job.restart_attempts=0 did not reach Flink"
    finally:
        again.stop()


def final_lists(records: list[Record]) -> dict[str, list[tuple[str, float]]]:
    return {user: [(it.item_id, it.score) for it in Recommendation.from_json(rec.value).items]
            for user, rec in latest_by_key(records).items() if rec.value is not None}


def test_exactly_once_failure_leaves_the_same_user_state(kafka_broker, tmp_path: Path) -> None:
    """A user's step depends on their state, their event and the shared parameters (item
    vectors, co-visitation, the score blend); its random draws and learning rate on the
    user and their event count only. With the shared parameters fixed (item learning off,
    ``job.learn_items=false``, which also stops co-visitation; blend learning off,
    ``model.blend_learning_rate=0``), replaying a user's events after a restore must repeat
    that user's steps exactly: the final lists and their scores (a function of the user
    vector) equal those of an uninterrupted run. With them learning, they depend on how
    different users' events interleave into bundles, which no run reproduces; the test
    before this one checks counts and order in that case."""
    events, counts = storefront_traffic(n_users=12, per_user=25, prefix="det")
    runs: dict[str, dict[str, list[tuple[str, float]]]] = {}
    for name in ("uninterrupted", "failed"):
        work = tmp_path / name
        work.mkdir()
        marker = work / "fault-fired"
        settings, overrides = job_settings(
            kafka_broker.settings, work,
            ["job.parallelism=2", "job.delivery=exactly-once", "job.learn_items=false",
             "model.blend_learning_rate=0", "model.exploration=0.0"])
        env = {ENV_VAR: f"60:{marker}"} if name == "failed" else {}
        job = start_with_catalogue(settings, overrides, work / "job.log", env=env)
        try:
            for part in chunks(events, 30):
                job.send_events(part)
                time.sleep(0.4)
            records = job.wait_for(settings.topics.recommendations, reached(counts),
                                   timeout_s=240, what=f"every event applied ({name})")
            assert_delivered(records, counts, exactly_once=True)
            if name == "failed":
                assert marker.exists() and job.restarts() >= 1, "the fault did not happen"
            runs[name] = final_lists(records)
        finally:
            job.stop()
    base, failed = runs["uninterrupted"], runs["failed"]
    assert set(base) == set(failed) == set(counts)
    for user in counts:
        assert [i for i, _ in failed[user]] == [i for i, _ in base[user]], user
        assert [s for _, s in failed[user]] == pytest.approx([s for _, s in base[user]],
                                                             rel=1e-5, abs=1e-6), user


def test_broker_restart_mid_stream(tmp_path: Path) -> None:
    """Stop the broker under a running exactly-once job, send while it is down, restart it."""
    broker = local_broker_settings(tmp_path / "kafka")
    start_broker(broker)
    job: JobProcess | None = None
    try:
        settings, overrides = job_settings(broker, tmp_path, ["job.delivery=exactly-once"])
        job = start_with_catalogue(settings, overrides, tmp_path / "job.log")
        events, counts = storefront_traffic(n_users=8, per_user=30, prefix="brk")
        third = len(events) // 3
        job.send_events(events[:third])
        first = Counter(e.user_id for e in events[:third] if e.user_id is not None)
        job.wait_for(settings.topics.recommendations, reached(first), timeout_s=120,
                     what="lists before the broker stops")

        broker_down(broker)
        # The producer buffers while the broker is away (and while it starts again: its
        # flush may wait longer than the usual 30 s); the job's clients reconnect.
        sent: list[int] = []
        sender = threading.Thread(target=lambda: sent.append(
            job.send_events(events[third:2 * third], flush_timeout_s=110)))
        sender.start()
        time.sleep(8.0)
        start_broker(broker)
        sender.join(timeout=120)
        assert sent == [2 * third - third], "the test producer never got its records out"
        job.send_events(events[2 * third:])
        records = job.wait_for(settings.topics.recommendations, reached(counts),
                               timeout_s=300, what="every event applied after the restart")
        assert_delivered(records, counts, exactly_once=True)
        print(f"broker restart: {len(events)} events produced, {sum(applied(records).values())}"
              f" applied, job restarts: {job.restarts()}")
    finally:
        if job is not None:
            job.stop()
        broker_down(broker)


ONE_MB = 1_000_000


def test_fuzzed_malformed_records_between_valid_traffic(kafka_broker, tmp_path: Path) -> None:
    settings, overrides = job_settings(kafka_broker.settings, tmp_path)
    limits = (settings.job.max_payload_bytes, settings.job.max_id_length)
    malformed = draw_malformed(10_000)
    # Payloads of 1 MB (over max_payload_bytes, under the broker's message limit).
    filler = b"x" * ONE_MB
    malformed += [("1mb_payload", b"big", filler),
                  ("1mb_payload", None, b'{"event_id":"' + filler[:ONE_MB - 14] + b'"}'),
                  ("1mb_payload", b"big", b"\xff" * ONE_MB)]
    events, counts = storefront_traffic(n_users=20, per_user=20, prefix="fz")
    valid = [(e.user_id.encode() if e.user_id else None, encode_event(e)) for e in events]
    valid += valid[::10]  # duplicate event ids: applied once
    random.Random(3).shuffle(malformed)

    job = start_with_catalogue(settings, overrides, tmp_path / "job.log")
    try:
        sent: list[tuple[object, bytes | None, bool]] = []  # (future, value, invalid)
        step = len(malformed) // len(valid) + 1
        for i, (_, key, value) in enumerate(malformed):
            sent.append((job.send_raw(key, value), value, True))
            if i % step == 0 and valid:
                vkey, vvalue = valid.pop()
                sent.append((job.send_raw(vkey, vvalue), vvalue, False))
        for vkey, vvalue in valid:
            sent.append((job.send_raw(vkey, vvalue), vvalue, False))
        job.flush()
        invalid: dict[tuple[int, int], bytes | None] = {}
        for future, value, bad in sent:
            meta = future.get(timeout=30)  # type: ignore[attr-defined]
            if bad:
                invalid[(meta.partition, meta.offset)] = value
        assert len(invalid) >= 10_000

        dlq = job.wait_for(settings.topics.dlq, lambda rs: len(rs) >= len(invalid),
                           timeout_s=300, what="every malformed record in the DLQ")
        records = job.wait_for(settings.topics.recommendations, reached(counts), timeout_s=120,
                               what="every valid event applied")
        letters = [DeadLetter.from_json(r.value) for r in dlq]
        where = Counter((d.partition, d.offset) for d in letters)
        assert max(where.values()) == 1, "a record was dead-lettered twice"
        assert set(where) == set(invalid), "dead letters do not match the malformed records"
        for letter in letters:
            original = invalid[(letter.partition, letter.offset)]
            assert letter.topic == settings.topics.events
            assert letter.original_bytes() == original
            expected = decode_event(original, *limits)
            assert isinstance(expected, DecodeError)
            assert (letter.error_code, letter.field) == (expected.code, expected.field)
            assert letter.message
        assert_delivered(records, counts, exactly_once=False)
        assert job.restarts() == 0, "the job restarted because of input"
        job.assert_alive()
        kinds = Counter(kind for kind, _, _ in malformed)
        print(f"fuzz: {len(invalid)} malformed records ({dict(kinds)}), {len(letters)} dead"
              f" letters, {sum(counts.values())} valid events applied")
    finally:
        job.stop()
