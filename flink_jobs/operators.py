"""Thin Flink operators: bind state, decode, call the model core, encode, emit.

Messages between Python operators are plain picklable tuples/dataclasses; the rows that
leave for Kafka are Row(key, value) bytes (see ``flink_jobs.kafka_io``).
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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

from flink_jobs.kafka_io import KEYED_BYTES_TYPE
from online_models.config import ModelConfig
from online_models.core import (
    apply_item_gradient,
    lr_schedule,
    new_item_state,
    recommend_for_users,
    user_step,
)
from online_models.replica import LN2, NEW_ITEM_TREND, ItemReplica
from online_models.state import ItemGradient, ItemState, UserState
from schemas.dlq import DeadLetter, encode_dead_letter
from schemas.events import DecodeError, Event, decode_event
from schemas.item_embedding import ItemEmbedding
from schemas.recommendation import Recommendation

DLQ_TAG = OutputTag("dead-letters", KEYED_BYTES_TYPE)
ITEM_UPSERT_TAG = OutputTag("item-upserts", Types.PICKLED_BYTE_ARRAY())
ITEM_GRADIENT_TAG = OutputTag("item-gradients", Types.PICKLED_BYTE_ARRAY())
# Broadcast state of the item replica: item_id -> item-embedding v1 bytes. State holds bytes
# as PICKLED_BYTE_ARRAY: PyFlink's state converters turn PRIMITIVE_ARRAY(BYTE) into tuples.
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
    forget: bool = False


def refresh_shard(user_id: str, shards: int) -> int:
    """Scorer shard of a user: requests of one user always reach the same scorer, in order."""
    return zlib.crc32(user_id.encode()) % shards


class ParseEvents(ProcessFunction):
    """Decode raw Kafka records; invalid ones go to the DLQ side output with their reason."""

    def __init__(self, max_payload_bytes: int, max_id_length: int) -> None:
        self.max_payload_bytes = max_payload_bytes
        self.max_id_length = max_id_length

    def open(self, runtime_context: RuntimeContext) -> None:
        group = runtime_context.get_metrics_group().add_group("freshrec")
        self._group = group
        self._consumed: dict[str, Any] = {}
        self._invalid: dict[str, Any] = {}
        self._dlq_writes = group.counter("dlq_writes_total")

    def _count(self, table: dict[str, Any], name: str, label: str, value: str) -> None:
        counter = table.get(value)
        if counter is None:
            # Label values are bounded: event types and error codes come from the schema.
            counter = self._group.add_group(label, value).counter(name)
            table[value] = counter
        counter.inc()

    def process_element(self, row: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
        result = decode_event(row[5], self.max_payload_bytes, self.max_id_length)
        if isinstance(result, DecodeError):
            self._count(self._invalid, "events_invalid_total", "reason", result.code)
            self._dlq_writes.inc()
            dead = DeadLetter.build(
                row[5], row[4], result.code, result.field, result.message,
                row[0], row[1], row[2], now_ms(),
            )
            yield DLQ_TAG, Row(row[4], encode_dead_letter(dead))
            return
        self._count(self._consumed, "events_consumed_total", "event_type", result.event_type)
        if result.event_type == "item_upsert":
            yield ITEM_UPSERT_TAG, result
        else:
            yield result


def _ttl(days: int) -> StateTtlConfig:
    return (
        StateTtlConfig.new_builder(Time.days(days))
        .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
        .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
        .build()
    )


def _seconds_ttl(seconds: int) -> StateTtlConfig:
    return (
        StateTtlConfig.new_builder(Time.seconds(seconds))
        .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
        .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
        .build()
    )


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

    def _ensure_replica(self, ctx: Any) -> None:
        if self._replica_loaded:
            return
        self._replica_loaded = True
        for item_id, blob in ctx.get_broadcast_state(ITEMS_DESCRIPTOR).items():
            if item_id not in self.replica:
                self._apply_embedding(ItemEmbedding.from_bytes(blob))

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

    def process_broadcast_element(self, value: tuple[str, bytes], ctx: Any) -> list[Any]:
        item_id, blob = value
        ctx.get_broadcast_state(ITEMS_DESCRIPTOR).put(item_id, blob)
        self._apply_embedding(ItemEmbedding.from_bytes(blob))
        return []


class UserUpdate(_ReplicaMixin, KeyedBroadcastProcessFunction):
    """Keyed by user: dedup, the user-side SGD step, item gradients out, owed refreshes."""

    def __init__(self, config: ModelConfig, refresh_interval_ms: int, dedup_window_s: int,
                 user_ttl_days: int) -> None:
        self.config = config
        self.refresh_interval_ms = refresh_interval_ms
        self.dedup_window_s = dedup_window_s
        self.user_ttl_days = user_ttl_days

    def open(self, runtime_context: RuntimeContext) -> None:
        self._init_replica()
        user_desc = ValueStateDescriptor("user", Types.PICKLED_BYTE_ARRAY())
        meta_desc = ValueStateDescriptor("refresh", Types.PICKLED_BYTE_ARRAY())
        seen_desc = MapStateDescriptor("event-ids", Types.STRING(), Types.BOOLEAN())
        user_desc.enable_time_to_live(_ttl(self.user_ttl_days))
        meta_desc.enable_time_to_live(_ttl(self.user_ttl_days))
        seen_desc.enable_time_to_live(_seconds_ttl(self.dedup_window_s))
        self.user_state = runtime_context.get_state(user_desc)
        self.refresh_state = runtime_context.get_state(meta_desc)
        self.seen_ids = runtime_context.get_map_state(seen_desc)
        self.rng = np.random.default_rng(self.config.seed)
        group = runtime_context.get_metrics_group().add_group("freshrec")
        self._duplicates = group.counter("duplicates_dropped_total")
        self._coalesced = group.counter("refreshes_coalesced_total")
        self._applied = 0

    def process_element(self, event: Event, ctx: Any) -> Iterator[Any]:
        self._ensure_replica(ctx)
        if self.seen_ids.contains(event.event_id):
            self._duplicates.inc()
            return
        self.seen_ids.put(event.event_id, True)
        user_id = ctx.get_current_key()
        # (seq of the last published list, time of the last refresh, timer pending, last event)
        seq, last_refresh, pending, _, _ = self.refresh_state.value() or (0, 0, False, 0, "")
        if event.event_type == "forget_user":
            self.user_state.clear()
            self.refresh_state.clear()
            self.seen_ids.clear()
            yield RefreshRequest(user_id, None, seq + 1, event.ts_ms, event.event_id, forget=True)
            return
        blob = self.user_state.value()
        user = UserState.from_bytes(blob) if blob else UserState.new(
            user_id, self.config.dim, self.config.seed)
        self._applied += 1
        new_user, grads = user_step(
            user, event, self.replica, self.config, self.rng,
            lr_schedule(self._applied, self.config),
        )
        self.user_state.update(new_user.to_bytes())
        for grad in grads:
            yield ITEM_GRADIENT_TAG, grad
        now = ctx.timer_service().current_processing_time()
        if pending:
            self._coalesced.inc()
            self.refresh_state.update((seq, last_refresh, True, event.ts_ms, event.event_id))
        elif now - last_refresh >= self.refresh_interval_ms:
            self.refresh_state.update((seq + 1, now, False, event.ts_ms, event.event_id))
            yield RefreshRequest(user_id, new_user.to_bytes(), seq + 1, event.ts_ms,
                                 event.event_id)
        else:
            self._coalesced.inc()
            ctx.timer_service().register_processing_time_timer(
                last_refresh + self.refresh_interval_ms)
            self.refresh_state.update((seq, last_refresh, True, event.ts_ms, event.event_id))

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[RefreshRequest]:
        state = self.refresh_state.value()
        blob = self.user_state.value()
        if state is None or blob is None or not state[2]:
            return
        seq, _, _, last_ts, last_id = state
        self.refresh_state.update((seq + 1, timestamp, False, last_ts, last_id))
        yield RefreshRequest(ctx.get_current_key(), blob, seq + 1, last_ts, last_id)


class RefreshScorer(_ReplicaMixin, KeyedBroadcastProcessFunction):
    """Keyed by shard: buffers owed refreshes in state and scores them in one batch."""

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
        group = runtime_context.get_metrics_group().add_group("freshrec")
        self._published = group.counter("recommendations_published_total")

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

    def _flush(self) -> Iterator[Row]:
        requests: list[RefreshRequest] = list(self.buffer.get())
        self.buffer.clear()
        self.waiting.clear()
        # Only the newest request per user matters; a forget supersedes what came before.
        latest: dict[str, RefreshRequest] = {}
        for req in requests:
            latest[req.user_id] = req
        scored = [r for r in latest.values() if not r.forget]
        users = [UserState.from_bytes(r.user_state) for r in scored if r.user_state]
        lists = dict(zip([r.user_id for r in scored],
                         recommend_for_users(users, self.replica, self.config), strict=True))
        n_events = {u.user_id: u.n_events for u in users}
        generated = now_ms()
        for req in latest.values():
            key = req.user_id.encode()
            if req.forget:
                yield Row(key, None)
                continue
            rec = Recommendation(
                user_id=req.user_id, items=tuple(lists[req.user_id]),
                model_version=self.model_version, generated_at=generated,
                last_event_ts=req.last_event_ts, last_event_id=req.last_event_id, seq=req.seq,
                cold_start=n_events[req.user_id] < self.config.cold_events,
                events_applied=n_events[req.user_id],
            )
            self._published.inc()
            yield Row(key, rec.to_bytes())


class ItemUpdate(KeyedProcessFunction):
    """Keyed by item: applies gradients and upserts, publishes at most once per interval."""

    def __init__(self, config: ModelConfig, publish_interval_ms: int, dedup_window_s: int
                 ) -> None:
        self.config = config
        self.publish_interval_ms = publish_interval_ms
        self.dedup_window_s = dedup_window_s
        self._decay_per_ms = LN2 / (config.trend_half_life_s * 1000.0)

    def open(self, runtime_context: RuntimeContext) -> None:
        self.item_state = runtime_context.get_state(
            ValueStateDescriptor("item", Types.PICKLED_BYTE_ARRAY()))
        self.pending = runtime_context.get_state(ValueStateDescriptor("publish-at", Types.LONG()))
        seen_desc = MapStateDescriptor("upsert-ids", Types.STRING(), Types.BOOLEAN())
        seen_desc.enable_time_to_live(_seconds_ttl(self.dedup_window_s))
        self.seen_ids = runtime_context.get_map_state(seen_desc)

    def _current(self, item_id: str, meta: dict[str, Any] | None) -> ItemState:
        blob = self.item_state.value()
        return ItemState.from_bytes(blob) if blob else new_item_state(item_id, self.config, meta)

    def process_element(self, value: ItemGradient | Event, ctx: Any) -> list[Any]:
        item_id = ctx.get_current_key()
        if isinstance(value, Event):
            if self.seen_ids.contains(value.event_id):
                return []
            self.seen_ids.put(value.event_id, True)
            meta = {"category": value.category, "brand": value.brand, "price": value.price,
                    "title": value.title, "available": value.available}
            item = self._current(item_id, meta)
            item = item.replace(**{k: v for k, v in meta.items() if v is not None},
                                last_ts=max(item.last_ts, value.ts_ms))
        else:
            meta = {"category": value.category, "brand": value.brand, "price": value.price}
            item = apply_item_gradient(self._current(item_id, meta), value, self.config)
        self.item_state.update(item.to_bytes())
        if self.pending.value() is None:
            at = ctx.timer_service().current_processing_time() + self.publish_interval_ms
            ctx.timer_service().register_processing_time_timer(at)
            self.pending.update(at)
        return []

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Row]:
        self.pending.clear()
        blob = self.item_state.value()
        if blob is None:
            return
        item = ItemState.from_bytes(blob)
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
        yield Row(item.item_id.encode(), emb.to_bytes())


def parse_item_record(row: Row) -> tuple[str, bytes] | None:
    """(item_id, item-embedding bytes) from a changelog record; tombstones are skipped."""
    if row[4] is None or row[5] is None:
        return None
    return row[4].decode("utf-8", "replace"), bytes(row[5])
