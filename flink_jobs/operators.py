"""Thin Flink operators: bind state, decode, call the model core, encode, emit.

Messages between Python operators are plain picklable tuples/dataclasses; the rows that
leave for Kafka are Row(key, value) bytes (see ``flink_jobs.kafka_io``).
"""

from __future__ import annotations

import dataclasses
import math
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# torch must not be imported here: thread mode unpickles every task's function in its own
# thread of one interpreter while the tasks initialise, and torch's C extension initialising
# concurrently with other imports there was seen to hang tasks in INITIALIZING (py-spy:
# stuck in torch/__init__ -> ExtensionFileLoader.create_module). The model core imports torch
# lazily, at the first batched scoring, when every task is already running.
import numpy as np
from pyflink.common import Row, Types
from pyflink.common.time import Time
from pyflink.datastream import (
    KeyedBroadcastProcessFunction,
    KeyedProcessFunction,
    OutputTag,
    ProcessFunction,
    RuntimeContext,
)
from pyflink.datastream.state import (
    ListStateDescriptor,
    MapStateDescriptor,
    StateTtlConfig,
    ValueStateDescriptor,
)

from flink_jobs.fault_injection import InjectedFault
from flink_jobs.kafka_io import KEYED_BYTES_TYPE
from flink_jobs.metrics import JobMetrics

# Pending and RefreshState stay importable from here: older pickled state names this module.
from flink_jobs.user_value import (
    NO_PENDING,
    Pending,
    RefreshState,
    pack_user_value,
    unpack_user_value,
)
from freshrec.privacy import load_key, pseudonymize
from online_models.config import ModelConfig
from online_models.core import (
    apply_item_gradient,
    lr_schedule,
    new_item_state,
    recommend_for_users,
    user_step_with_loss,
)
from online_models.model import cold_start_bonus, learn_cold_start
from online_models.replica import LN2, NEW_ITEM_TREND, ItemReplica
from online_models.state import ItemGradient, ItemState, UserState
from online_models.streaming import (
    DriftMonitor,
    PrequentialWindow,
    RollingMetrics,
    UserClusters,
)
from schemas.dlq import DeadLetter, encode_dead_letter
from schemas.events import DecodeError, Event, decode_event
from schemas.item_embedding import ItemEmbedding
from schemas.recommendation import Recommendation

DLQ_TAG = OutputTag("dead-letters", KEYED_BYTES_TYPE)
ITEM_UPSERT_TAG = OutputTag("item-upserts", Types.PICKLED_BYTE_ARRAY())
ITEM_GRADIENT_TAG = OutputTag("item-gradients", Types.PICKLED_BYTE_ARRAY())
# Broadcast state of the item replica: item_id -> ItemEmbedding (pickled). State holds Python
# values as PICKLED_BYTE_ARRAY: PyFlink's state converters turn PRIMITIVE_ARRAY(BYTE) into
# tuples.
ITEMS_DESCRIPTOR = MapStateDescriptor(
    "item-replica", Types.STRING(), Types.PICKLED_BYTE_ARRAY()
)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class RefreshRequest:
    """A user's list is owed: score it (or, with ``forget``, publish a tombstone)."""

    user_id: str
    user_state: bytes | None
    seq: int
    last_event_ts: int
    last_event_id: str
    pending: Pending = NO_PENDING
    forget: bool = False


def refresh_shard(user_id: str, shards: int) -> int:
    """Scorer shard of a user: requests of one user always reach the same scorer, in order."""
    return zlib.crc32(user_id.encode()) % shards


class ParseEvents(ProcessFunction):
    """Decode raw Kafka records; invalid ones go to the DLQ side output with their reason.

    Valid user events leave as ``(event, kafka_append_ms)`` for ingestion-time latency.
    """

    def __init__(self, max_payload_bytes: int, max_id_length: int,
                 pseudonym_key_file: str | None = None) -> None:
        self.max_payload_bytes = max_payload_bytes
        self.max_id_length = max_id_length
        # None: keep user ids; else pseudonymise with the key read in open(), so the key is
        # never part of the job graph.
        self.pseudonym_key_file = pseudonym_key_file

    def open(self, runtime_context: RuntimeContext) -> None:
        self.metrics = JobMetrics(runtime_context)
        self._dlq_writes = self.metrics.counter("freshrec_job_dlq_writes_total")
        self._key = (None if self.pseudonym_key_file is None
                     else load_key(self.pseudonym_key_file))

    def process_element(self, row: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
        result = decode_event(row[5], self.max_payload_bytes, self.max_id_length)
        if isinstance(result, DecodeError):
            self.metrics.counter("freshrec_job_events_invalid_total", result.code).inc()
            self._dlq_writes.inc()
            dead = DeadLetter.build(
                row[5], row[4], result.code, result.field, result.message,
                row[0], row[1], row[2], now_ms(),
            )
            yield DLQ_TAG, Row(row[4], encode_dead_letter(dead))
            return
        self.metrics.counter("freshrec_job_events_consumed_total", result.event_type).inc()
        if result.event_type == "item_upsert":
            yield ITEM_UPSERT_TAG, result
            return
        if self._key is not None and result.user_id is not None:
            result = dataclasses.replace(result, user_id=pseudonymize(self._key, result.user_id))
        yield result, row[3]


# PyFlink's default background cleanup builds a 30-day java.time.Duration through a Py4J
# gateway, which in thread mode launches a JVM from inside the TaskManager and can leave the
# task stuck in INITIALIZING (FLINK-40628). Disabling the default and naming the same
# strategies explicitly avoids it; the compaction-filter period is not passed to Java by the
# embedded converter anyway.
_UNUSED_PERIODIC_COMPACTION = object()


def _ttl(ttl: Time) -> StateTtlConfig:
    return (
        StateTtlConfig.new_builder(ttl)
        .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
        .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
        .disable_cleanup_in_background()
        .cleanup_incrementally(10, False)
        .cleanup_in_rocksdb_compact_filter(1000, _UNUSED_PERIODIC_COMPACTION)  # type: ignore[arg-type]
        .build()
    )


def user_state_descriptor(user_ttl_days: int) -> ValueStateDescriptor:
    """user-update's keyed state: UserState bytes and RefreshState packed in one value
    (:mod:`flink_jobs.user_value`) per user, one read and one write per event; the user's
    recent event ids travel in the RefreshState."""
    user = ValueStateDescriptor("user", Types.PICKLED_BYTE_ARRAY())
    user.enable_time_to_live(_ttl(Time.days(user_ttl_days)))
    return user


def item_state_descriptors(dedup_window_s: int
                           ) -> tuple[ValueStateDescriptor, ListStateDescriptor,
                                      MapStateDescriptor]:
    """item-update's keyed state: ``ItemState`` bytes, the messages waiting for the item's
    next publish tick, and the item_upsert event ids seen within the window."""
    item = ValueStateDescriptor("item", Types.PICKLED_BYTE_ARRAY())
    inbox = ListStateDescriptor("inbox", Types.PICKLED_BYTE_ARRAY())
    seen = MapStateDescriptor("upsert-ids", Types.STRING(), Types.BOOLEAN())
    seen.enable_time_to_live(_ttl(Time.seconds(dedup_window_s)))
    return item, inbox, seen


class _ReplicaMixin:
    """A per-instance numpy replica of item vectors fed by the broadcast changelog.

    The broadcast state is what Flink checkpoints; the numpy replica is a cache rebuilt
    from it on the first element after a (re)start.
    """

    config: ModelConfig
    replica: ItemReplica
    _replica_loaded: bool

    def _init_replica(self) -> None:
        self.replica = ItemReplica(self.config)
        self._replica_loaded = False
        self._replica_state: Any = None

    def _ensure_replica(self, ctx: Any) -> None:
        if self._replica_loaded:
            return
        self._replica_loaded = True
        for item_id, emb in ctx.get_broadcast_state(ITEMS_DESCRIPTOR).items():
            if item_id not in self.replica:
                self._apply_embedding(emb)

    def _apply_embedding(self, emb: ItemEmbedding) -> None:
        meta = {"category": emb.category, "brand": emb.brand, "price": emb.price,
                "available": emb.available, "title": emb.title}
        # The changelog carries the log trend as of updated_at; rebase it on the replica's
        # own forward-decay origin so all items stay comparable.
        trend = None if emb.trend is None else emb.trend + self.replica.log_time(emb.updated_at)
        # Until its first interaction an item lives where its category's items have moved.
        vector = (self.replica.cold_item_vector(emb.item_id, meta) if emb.n_events == 0
                  else np.asarray(emb.vector, dtype=np.float32))
        self.replica.upsert(emb.item_id, vector, meta, bias=emb.bias, trend=trend, acc=emb.acc)

    def process_broadcast_element(self, value: tuple[ItemEmbedding, int], ctx: Any
                                  ) -> list[Any]:
        emb, published_ms = value
        if self._replica_state is None:
            # The broadcast state of an operator instance is one object; wrapping it again for
            # every element costs a descriptor conversion into Java each time.
            self._replica_state = ctx.get_broadcast_state(ITEMS_DESCRIPTOR)
        self._replica_state.put(emb.item_id, emb)
        self._apply_embedding(emb)
        self._on_replica_update(published_ms)
        return []

    def _on_replica_update(self, published_ms: int) -> None:
        """Hook for replica metrics."""


class UserUpdate(_ReplicaMixin, KeyedBroadcastProcessFunction):
    """Keyed by user: dedup, the user-side SGD step, item gradients out, owed refreshes."""

    def __init__(self, config: ModelConfig, refresh_interval_ms: int, dedup_window_s: int,
                 dedup_max_ids: int, user_ttl_days: int, learn_items: bool = True) -> None:
        self.config = config
        self.refresh_interval_ms = refresh_interval_ms
        self.dedup_window_s = dedup_window_s
        self.dedup_max_ids = dedup_max_ids
        self.user_ttl_days = user_ttl_days
        self.learn_items = learn_items

    def open(self, runtime_context: RuntimeContext) -> None:
        self._init_replica()
        self.user_state = runtime_context.get_state(user_state_descriptor(self.user_ttl_days))
        metrics = JobMetrics(runtime_context)
        self._duplicates = metrics.counter("freshrec_job_duplicates_dropped_total")
        self._coalesced = metrics.counter("freshrec_job_refreshes_coalesced_total")
        self._users = metrics.gauge("freshrec_job_users_in_state")
        self._items_gauge = metrics.gauge("freshrec_job_items_in_replica")
        self._staleness = metrics.gauge("freshrec_job_item_replica_staleness_seconds")
        self._loss_gauge = metrics.gauge("freshrec_job_model_loss")
        self._loss = RollingMetrics(1000)
        self._n_users = 0
        self._applied = 0
        self._fault = InjectedFault.from_env()

    def _on_replica_update(self, published_ms: int) -> None:
        self._staleness.set(max(now_ms() - published_ms, 0) / 1000.0)
        self._items_gauge.set(float(len(self.replica)))

    def process_element(self, value: tuple[Event, int], ctx: Any) -> Iterator[Any]:
        event, ingest_ms = value
        self._ensure_replica(ctx)
        user_id = ctx.get_current_key()
        stored = self.user_state.value()
        blob, state = (None, RefreshState()) if stored is None else unpack_user_value(stored)
        now = now_ms()  # Flink's processing time is the wall clock (no call into Java)
        if state.recent_ids.contains(event.event_id, now // 1000, self.dedup_window_s):
            self._duplicates.inc()
            return
        recent_ids = state.recent_ids.add(event.event_id, now // 1000, self.dedup_window_s,
                                          self.dedup_max_ids)
        if event.event_type == "forget_user":
            if blob is not None:
                self._n_users -= 1
                self._users.set(float(self._n_users))
            self.user_state.clear()
            yield RefreshRequest(user_id, None, state.seq + 1, event.ts_ms, event.event_id,
                                 forget=True)
            return
        if blob is None:
            user = UserState.new(user_id, self.config.dim, self.config.seed)
            self._n_users += 1
            self._users.set(float(self._n_users))
        else:
            user = UserState.from_bytes(blob)
        self._applied += 1
        if self._fault is not None:
            self._fault.check(self._applied)
        # The random draws and the learning rate of a step depend on the user and their
        # event count only, so replaying a user's events after a restore repeats their steps.
        rng = np.random.default_rng((self.config.seed, zlib.crc32(user_id.encode()),
                                     user.n_events))
        new_user, grads, loss = user_step_with_loss(
            user, event, self.replica, self.config, rng,
            lr_schedule(user.n_events, self.config),
        )
        if not self.learn_items:
            grads = []
        if loss is not None:
            self._loss.update(loss)
            if self._applied % 64 == 0:  # a gauge write crosses into Java
                self._loss_gauge.set(self._loss.hit_rate)
        new_blob = new_user.to_bytes()
        for grad in grads:
            yield ITEM_GRADIENT_TAG, grad
        state = dataclasses.replace(state, last_event_ts=event.ts_ms,
                                    last_event_id=event.event_id,
                                    pending=state.pending.add(
                                        event, ingest_ms,
                                        max(self.config.event_weight(event.event_type), 0.0)),
                                    recent_ids=recent_ids)
        if state.timer_pending:
            self._coalesced.inc()
        elif now - state.last_refresh_ms >= self.refresh_interval_ms:
            state, request = self._refresh(user_id, new_blob, state, now)
            yield request
        else:
            self._coalesced.inc()
            ctx.timer_service().register_processing_time_timer(
                state.last_refresh_ms + self.refresh_interval_ms)
            state = dataclasses.replace(state, timer_pending=True)
        self.user_state.update(pack_user_value(new_blob, state))

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[RefreshRequest]:
        stored = self.user_state.value()
        if stored is None:
            return
        blob, state = unpack_user_value(stored)
        if not state.timer_pending:
            return
        state, request = self._refresh(ctx.get_current_key(), blob, state, timestamp)
        self.user_state.update(pack_user_value(blob, state))
        yield request

    @staticmethod
    def _refresh(user_id: str, blob: bytes, state: RefreshState, now: int
                 ) -> tuple[RefreshState, RefreshRequest]:
        request = RefreshRequest(user_id, blob, state.seq + 1, state.last_event_ts,
                                 state.last_event_id, state.pending)
        # The refresh settles seq, time, timer and pending; every other field stays.
        return dataclasses.replace(state, seq=state.seq + 1, last_refresh_ms=now,
                                   timer_pending=False, pending=NO_PENDING), request


class RefreshScorer(_ReplicaMixin, KeyedBroadcastProcessFunction):
    """Keyed by shard: buffers owed refreshes in state and scores them in one batch.

    It also keeps each user's last published item ids, so events that arrive later are
    scored test-then-learn against the list the user was actually shown, and the streaming
    user clusters (River k-means) whose popular items fill cold users' lists. The clusters
    are a per-instance cache, not state: after a restart they relearn from new users' first
    events (cold users get trending items alone meanwhile).
    """

    def __init__(self, config: ModelConfig, model_version: str, batch_delay_ms: int,
                 max_batch: int) -> None:
        self.config = config
        self.model_version = model_version
        self.batch_delay_ms = batch_delay_ms
        self.max_batch = max_batch

    def open(self, runtime_context: RuntimeContext) -> None:
        self._init_replica()
        self.buffer = runtime_context.get_list_state(
            ListStateDescriptor("owed-refreshes", Types.PICKLED_BYTE_ARRAY()))
        self.waiting = runtime_context.get_state(
            ValueStateDescriptor("waiting", Types.INT()))
        self.shown = runtime_context.get_map_state(
            MapStateDescriptor("last-lists", Types.STRING(), Types.PICKLED_BYTE_ARRAY()))
        metrics = JobMetrics(runtime_context)
        self._published = metrics.counter("freshrec_job_recommendations_published_total")
        self._cold = metrics.counter("freshrec_job_recommendations_cold_start_total")
        self._tombstones = metrics.counter("freshrec_job_tombstones_published_total")
        self._drifts = metrics.counter("freshrec_job_drift_detections_total")
        self._batch_size = metrics.gauge("freshrec_job_refresh_batch_size")
        self._hit_rate = metrics.gauge("freshrec_job_prequential_hit_rate")
        self._recall10 = metrics.gauge("freshrec_job_prequential_recall_at_10")
        self._ndcg = metrics.gauge("freshrec_job_prequential_ndcg")
        self._event_latency = metrics.histogram(
            "freshrec_job_event_to_recommendation_latency_seconds")
        self._ingest_latency = metrics.histogram(
            "freshrec_job_ingest_to_recommendation_latency_seconds")
        self._rolling = PrequentialWindow(self.config.top_k)
        self._drift = DriftMonitor()
        cfg = self.config
        self._clusters = UserClusters(cfg.n_clusters, cfg.dim, cfg.seed, cfg.trend_half_life_s)

    def process_element(self, request: RefreshRequest, ctx: Any) -> Iterator[Row]:
        self._ensure_replica(ctx)
        self.buffer.add(request)
        waiting = (self.waiting.value() or 0) + 1
        if waiting >= self.max_batch:
            yield from self._flush()
            return
        self.waiting.update(waiting)
        if waiting == 1:
            at = ctx.timer_service().current_processing_time() + self.batch_delay_ms
            ctx.timer_service().register_processing_time_timer(at)

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Row]:
        self._ensure_replica(ctx)
        yield from self._flush()

    def _evaluate(self, request: RefreshRequest) -> None:
        """Test-then-learn: were the new events' items in the list shown before them?"""
        shown = self.shown.get(request.user_id)
        if shown is None:
            return
        for item in request.pending.items:
            hit = self._rolling.update(shown, item)
            if self._drift.update(hit):
                self._drifts.inc()
        self._hit_rate.set(self._rolling.hit_rate)
        self._recall10.set(self._rolling.recall_at_10)
        self._ndcg.set(self._rolling.ndcg)

    def _learn_clusters(self, requests: list[RefreshRequest], users: dict[str, UserState]
                        ) -> None:
        """The clusters learn each new item of a scored user (with the user's newest vector);
        items from before a ``forget_user`` in the same batch are not learned."""
        since_forget: dict[str, list[RefreshRequest]] = {}
        for req in requests:
            if req.forget:
                since_forget[req.user_id] = []
            else:
                since_forget.setdefault(req.user_id, []).append(req)
        for user_id, reqs in since_forget.items():
            user = users.get(user_id)
            if user is None or user.n_events > 4 * self.config.cold_events:
                continue
            for req in reqs:
                for item, weight in zip(req.pending.items, req.pending.weights, strict=True):
                    learn_cold_start(self._clusters, user, self.replica, self.config, item,
                                     weight, req.last_event_ts)

    def _flush(self) -> Iterator[Row]:
        requests: list[RefreshRequest] = list(self.buffer.get())
        self.buffer.clear()
        self.waiting.clear()
        # Only the newest request per user is scored; a forget supersedes what came before.
        latest: dict[str, RefreshRequest] = {}
        for req in requests:
            if not req.forget:
                self._evaluate(req)
            latest[req.user_id] = req
        scored = [r for r in latest.values() if not r.forget and r.user_state is not None]
        users = [UserState.from_bytes(r.user_state) for r in scored]  # type: ignore[arg-type]
        self._learn_clusters(requests, dict(zip((r.user_id for r in scored), users,
                                                strict=True)))
        bonuses = [cold_start_bonus(self._clusters, u, self.replica, self.config)
                   for u in users]
        lists = recommend_for_users(users, self.replica, self.config, bonuses=bonuses)
        self._batch_size.set(float(len(users)))
        by_user = {r.user_id: (u, items) for r, u, items in zip(scored, users, lists,
                                                               strict=True)}
        generated = now_ms()
        for req in latest.values():
            key = req.user_id.encode()
            if req.user_id not in by_user:
                self.shown.remove(req.user_id)
                self._tombstones.inc()
                yield Row(key, None)
                continue
            user, items = by_user[req.user_id]
            rec = Recommendation(
                user_id=req.user_id, items=tuple(items), model_version=self.model_version,
                generated_at=generated, last_event_ts=req.last_event_ts,
                last_event_id=req.last_event_id, seq=req.seq,
                cold_start=user.n_events < self.config.cold_events,
                events_applied=user.n_events,
            )
            self.shown.put(req.user_id, tuple(it.item_id for it in items))
            self._published.inc()
            if rec.cold_start:
                self._cold.inc()
            for ts in req.pending.event_ts:
                self._event_latency.observe((generated - ts) / 1000.0)
            for ts in req.pending.ingest_ts:
                self._ingest_latency.observe((generated - ts) / 1000.0)
            yield Row(key, rec.to_bytes())


class ItemUpdate(KeyedProcessFunction):
    """Keyed by item: applies gradients and upserts, publishes at most once per interval.

    Messages are only appended to a list in state as they come (cheap); on the item's next
    publish tick they are applied in arrival order, so the item state is decoded and encoded
    once per tick instead of once per gradient.
    """

    def __init__(self, config: ModelConfig, publish_interval_ms: int,
                 background_publish_interval_ms: int, dedup_window_s: int) -> None:
        self.config = config
        self.publish_interval_ms = publish_interval_ms
        self.background_publish_interval_ms = background_publish_interval_ms
        self.dedup_window_s = dedup_window_s
        self._decay_per_ms = LN2 / (config.trend_half_life_s * 1000.0)

    def open(self, runtime_context: RuntimeContext) -> None:
        item_desc, inbox_desc, seen_desc = item_state_descriptors(self.dedup_window_s)
        self.item_state = runtime_context.get_state(item_desc)
        self.inbox = runtime_context.get_list_state(inbox_desc)
        self.seen_ids = runtime_context.get_map_state(seen_desc)
        metrics = JobMetrics(runtime_context)
        self._published = metrics.counter("freshrec_job_item_updates_published_total")
        self._duplicates = metrics.counter("freshrec_job_duplicates_dropped_total")
        # item -> earliest tick with a timer registered by this instance. Most messages find
        # their item's tick registered already, and each registration is a call into Java.
        # Not checkpointed: after a restore it starts empty and registers again (no-op).
        self._ticks: dict[str, int] = {}

    def process_element(self, value: ItemGradient | Event, ctx: Any) -> list[Any]:
        if isinstance(value, Event):
            if self.seen_ids.contains(value.event_id):
                self._duplicates.inc()
                return []
            self.seen_ids.put(value.event_id, True)
        self.inbox.add(value)
        # Interactions and upserts reach the replicas fast; an item only nudged as a sampled
        # negative or as context waits longer: most items in a step are, and each publish
        # is applied by every replica.
        foreground = isinstance(value, Event) or value.trend_weight > 0
        interval = (self.publish_interval_ms if foreground
                    else self.background_publish_interval_ms)
        # Flink's processing time is the wall clock; reading it here saves a call into Java.
        now = now_ms()
        tick = (now // interval + 1) * interval
        item_id = value.item_id
        if self._ticks.get(item_id, 0) < now or tick < self._ticks[item_id]:
            ctx.timer_service().register_processing_time_timer(tick)
            self._ticks[item_id] = tick
        return []

    def _apply(self, item: ItemState | None, item_id: str, message: ItemGradient | Event
               ) -> ItemState:
        if isinstance(message, Event):
            meta = {"category": message.category, "brand": message.brand,
                    "price": message.price, "title": message.title,
                    "available": message.available}
            item = item or new_item_state(item_id, self.config, meta)
            return item.replace(**{k: v for k, v in meta.items() if v is not None},
                                last_ts=max(item.last_ts, message.ts_ms))
        if item is None:
            meta = {"category": message.category, "brand": message.brand,
                    "price": message.price}
            item = new_item_state(item_id, self.config, meta)
        return apply_item_gradient(item, message, self.config)

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Row]:
        item_id = ctx.get_current_key()
        if self._ticks.get(item_id, 0) <= timestamp:
            self._ticks.pop(item_id, None)
        messages = list(self.inbox.get())
        if not messages:
            return
        self.inbox.clear()
        blob = self.item_state.value()
        item = ItemState.from_bytes(blob) if blob else None
        for message in messages:
            item = self._apply(item, item_id, message)
        assert item is not None
        self.item_state.update(item.to_bytes())
        # ItemState.trend is forward-decayed from the epoch; publish it as of last_ts. An item
        # without interactions gets the new-listing trend, as the in-memory replica does.
        trend = (item.trend - item.last_ts * self._decay_per_ms
                 if math.isfinite(item.trend) else math.log(NEW_ITEM_TREND))
        emb = ItemEmbedding(
            item_id=item.item_id, vector=tuple(float(x) for x in item.vector), bias=item.bias,
            trend=trend, n_events=item.n_events, updated_at=item.last_ts, acc=item.acc,
            category=item.category, brand=item.brand, title=item.title, price=item.price,
            available=item.available,
        )
        self._published.inc()
        yield Row(item.item_id.encode(), emb.to_bytes())


def parse_item_record(row: Row) -> tuple[ItemEmbedding, int] | None:
    """The item embedding of a changelog record and its publish time; tombstones are skipped.

    Decoded once here, before the broadcast, rather than once per replica.
    """
    if row[4] is None or row[5] is None:
        return None
    return ItemEmbedding.from_bytes(row[5]), row[3]
