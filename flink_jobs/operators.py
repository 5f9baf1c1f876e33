"""Thin Flink operators over bundles: bind state, read it once, call the pure side, write
it back once, emit one output record.

The work itself is in :mod:`flink_jobs.user_side` and :mod:`flink_jobs.item_side`; records
arrive as bundles from the Java bundlers and leave as one output bundle per call, split
into Kafka records by Java (:mod:`flink_jobs.bundles`). State values are bytes in explicit
layouts (``flink_jobs.user_value``, ``online_models.state``); PyFlink stores them through
``PICKLED_BYTE_ARRAY`` (a pickled ``bytes`` object: its state converters would turn
``PRIMITIVE_ARRAY(BYTE)`` into tuples).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# torch must not be imported here: thread mode unpickles every task's function in its own
# thread of one interpreter while the tasks initialise, and torch's C extension initialising
# concurrently with other imports there was seen to hang tasks in INITIALIZING (py-spy:
# stuck in torch/__init__ -> ExtensionFileLoader.create_module). The model core imports torch
# lazily, at the first batched scoring, when every task is already running.
from pyflink.common import Row, Types
from pyflink.common.time import Time
from pyflink.datastream import (
    KeyedBroadcastProcessFunction,
    KeyedProcessFunction,
    RuntimeContext,
)
from pyflink.datastream.state import (
    ListStateDescriptor,
    MapStateDescriptor,
    StateTtlConfig,
    ValueStateDescriptor,
)

from flink_jobs.bundles import decode_record_bundle, decode_shard_bundle, is_barrier_marker
from flink_jobs.changelog_reader import read_latest
from flink_jobs.fault_injection import InjectedFault
from flink_jobs.item_side import ItemSide, pack_due, pack_ids, unpack_due, unpack_ids
from flink_jobs.metrics import JobMetrics
from flink_jobs.native_imports import quiet_debug_logs, quiet_garbage_collector
from flink_jobs.replica_value import as_replica_value
from flink_jobs.shard_keys import shard_keys
from flink_jobs.state_cache import CachedMapState
from flink_jobs.user_side import UserSide
from flink_jobs.user_side_types import (
    BundleStats,
    UserBundleResult,
    UserSideSettings,
    now_ms,
    refresh_timer,
)
from freshrec_common.privacy import load_key
from freshrec_common.settings import Settings
from online_models.config import ModelConfig

log = logging.getLogger(__name__)

# user-update's broadcast state. It holds one marker, written with the first changelog
# bundle a subtask applies: a restore that finds it refills the replica from the changelog
# topic (flink_jobs.changelog_reader). Before layout 2 it held every item of the replica
# (item_id -> FR1 value, flink_jobs.replica_value): such a state is loaded, then cleared.
ITEMS_DESCRIPTOR = MapStateDescriptor("item-replica", Types.STRING(), Types.PICKLED_BYTE_ARRAY())
REPLICA_MARKER = ""  # no item id is empty (the event codec refuses it)
# One output record per call: an output bundle for the Java splitters.
OUTPUT_TYPE = Types.PRIMITIVE_ARRAY(Types.BYTE())
# Row(shard, bundle) made by the Java bundlers.
SHARD_BUNDLE_TYPE = Types.ROW([Types.INT(), Types.PRIMITIVE_ARRAY(Types.BYTE())])

# PyFlink's default background cleanup builds a 30-day java.time.Duration through a Py4J
# gateway, which in thread mode launches a JVM from inside the TaskManager and can leave the
# task stuck in INITIALIZING (FLINK-40628; its fix, apache/flink#29155, is in no release as
# of PyFlink 2.2.1). Disabling the default and naming the same strategies explicitly avoids
# it; the compaction-filter period is not passed to Java by the embedded converter anyway.
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


def user_state_descriptors(user_ttl_days: int) -> tuple[
        MapStateDescriptor, ValueStateDescriptor, ValueStateDescriptor]:
    """user-update's keyed state per user shard: each user's packed value
    (:mod:`flink_jobs.user_value`) by user id, the shard's owed refreshes
    (:func:`~flink_jobs.item_side.pack_due`) and its subtask's score blends as they were at
    the last barrier (:meth:`UserSide.kept_blends`)."""
    users = MapStateDescriptor("users", Types.STRING(), Types.PICKLED_BYTE_ARRAY())
    users.enable_time_to_live(_ttl(Time.days(user_ttl_days)))
    owed = ValueStateDescriptor("owed-refreshes", Types.PICKLED_BYTE_ARRAY())
    blends = ValueStateDescriptor("score-blends", Types.PICKLED_BYTE_ARRAY())
    return users, owed, blends


def item_state_descriptors(dedup_window_s: int
                           ) -> tuple[MapStateDescriptor, MapStateDescriptor,
                                      ListStateDescriptor, MapStateDescriptor]:
    """item-update's keyed state per item shard: ``ItemState`` bytes by item id, the
    item_upsert event ids seen within the window, the items waiting for the next
    foreground tick (a list: a bundle appends without reading) and the items waiting in
    each background slot (``item_side.pack_ids`` bytes by the slot's time)."""
    items = MapStateDescriptor("items", Types.STRING(), Types.PICKLED_BYTE_ARRAY())
    seen = MapStateDescriptor("upsert-ids", Types.STRING(), Types.BOOLEAN())
    seen.enable_time_to_live(_ttl(Time.seconds(dedup_window_s)))
    soon = ListStateDescriptor("publish-soon", Types.STRING())
    slots = MapStateDescriptor("publish-slots", Types.LONG(), Types.PICKLED_BYTE_ARRAY())
    return items, seen, soon, slots


# The items a checkpoint of the state layout before background slots has waiting for the
# background tick (published at it, a multiple of the background interval).
UNSLOTTED_LATER_DESCRIPTOR = ListStateDescriptor("publish-later", Types.STRING())


# item-update's text map per item shard (online_models.text.TextMap bytes).
TEXT_MAP_DESCRIPTOR = ValueStateDescriptor("text-map", Types.PICKLED_BYTE_ARRAY())


class ShardCount:
    """Each shard's state remembers the shard count it was written with, and a restore
    with another count stops the job: keys would land in other shards and start over."""

    def __init__(self, runtime_context: RuntimeContext, setting: str, shards: int) -> None:
        self.state = runtime_context.get_state(
            ValueStateDescriptor(f"{setting.removeprefix('job.')}-count", Types.INT()))
        self.setting, self.shards = setting, shards
        self._checked: set[int] = set()  # shards of this instance already checked

    def check(self, ctx: Any) -> None:
        shard = ctx.get_current_key()
        if shard in self._checked:
            return
        written = self.state.value()
        if written is None:
            self.state.update(self.shards)
        elif written != self.shards:
            raise ValueError(
                f"{self.setting} is {self.shards}, but the restored state was written with "
                f"{written} shards: its users or items would land in other shards and start "
                f"over. Restore with --set {self.setting}={written} (the count is fixed for "
                "the life of the state; docs/operations.md, Rescale).")
        self._checked.add(shard)


def _take_due(schedule: Any, timestamp: int, ctx: Any, interval_ms: int) -> list[str]:
    """Keys of a schedule (a ValueState of :func:`pack_due`) due at ``timestamp``; the rest
    stay, with a timer for the earliest of them (:func:`refresh_timer`)."""
    due = unpack_due(schedule.value())
    ready = [k for k, t in due.items() if t <= timestamp]
    rest = {k: t for k, t in due.items() if t > timestamp}
    if rest:
        schedule.update(pack_due(rest))
        ctx.timer_service().register_processing_time_timer(
            refresh_timer(min(rest.values()), interval_ms))
    else:
        schedule.clear()
    return ready


@dataclass(frozen=True)
class ChangelogTopic:
    """Where a restored user-update reads the item changelog (the Kafka client settings and
    the topic)."""

    settings: Settings
    topic: str


class UserUpdate(KeyedBroadcastProcessFunction):
    """Keyed by user shard: one call per record bundle (see :class:`UserSide`), the item
    replica fed by bundles of the changelog (broadcast).

    A bundle holds every shard of this subtask (the events' bundler gathers them), so the
    operator switches the current key to each record's shard for that shard's state and
    timers (:meth:`_use_shard`) and back to the bundle's key at the end; markers and timers
    come per shard, under the key Flink set."""

    def __init__(self, settings: UserSideSettings, user_ttl_days: int, user_shards: int,
                 state_cache_entries: int, changelog: ChangelogTopic,
                 pseudonym_key_file: str | None = None) -> None:
        self.settings = settings
        self.changelog = changelog
        self.user_ttl_days = user_ttl_days
        self.user_shards = user_shards
        self.state_cache_entries = state_cache_entries
        # None: keep user ids; else pseudonymise with the key read in open(), so the key is
        # never part of the job graph.
        self.pseudonym_key_file = pseudonym_key_file

    def open(self, runtime_context: RuntimeContext) -> None:
        quiet_garbage_collector()
        quiet_debug_logs()
        key = None if self.pseudonym_key_file is None else load_key(self.pseudonym_key_file)
        self.side = UserSide(self.settings, key)
        users, owed, blends = user_state_descriptors(self.user_ttl_days)
        self.users = CachedMapState(runtime_context.get_map_state(users),
                                    self.state_cache_entries, self.user_ttl_days * 86_400_000)
        self.owed = runtime_context.get_state(owed)
        self.blends = runtime_context.get_state(blends)
        self._blends_checked = False
        self.shard_count = ShardCount(runtime_context, "job.user_shards", self.user_shards)
        self._keys = shard_keys(self.user_shards)
        self._shard_of_key = {k: s for s, k in enumerate(self._keys)}
        from pemja import findClass  # the JVM bridge of thread mode

        self._key_switch = findClass("io.freshrec.flink.ShardKeySwitch")
        # PyFlink keeps the Java keyed state backend in its (private) wrapper's attribute.
        self._backend = runtime_context.get_keyed_state_backend()._keyed_state_backend
        self._replica_loaded = False
        self._marked = False  # the broadcast state holds (only) the marker
        m = self.metrics = JobMetrics(runtime_context)
        self._counters = {name: m.counter(f"freshrec_job_{name}") for name in (
            "dlq_writes_total", "duplicates_dropped_total", "refreshes_coalesced_total",
            "recommendations_published_total", "recommendations_cold_start_total",
            "tombstones_published_total", "drift_detections_total")}
        self._users_gauge = m.gauge("freshrec_job_users_in_state")
        self._items_gauge = m.gauge("freshrec_job_items_in_replica")
        self._staleness = m.gauge("freshrec_job_item_replica_staleness_seconds")
        self._loss_gauge = m.gauge("freshrec_job_model_loss")
        self._batch_size = m.gauge("freshrec_job_refresh_batch_size")
        self._hit_rate = m.gauge("freshrec_job_prequential_hit_rate")
        self._recall10 = m.gauge("freshrec_job_prequential_recall_at_10")
        self._ndcg = m.gauge("freshrec_job_prequential_ndcg")
        self._event_latency = m.histogram("freshrec_job_event_to_recommendation_latency_seconds")
        self._ingest_latency = m.histogram(
            "freshrec_job_ingest_to_recommendation_latency_seconds")
        self._n_users = 0
        self._applied = 0
        self._fault = InjectedFault.from_env()

    def _ensure_replica(self, ctx: Any) -> None:
        # The replica is a cache of the changelog topic, refilled on the first element after
        # a restore: the changelog source resumes at its checkpointed offsets.
        if self._replica_loaded:
            return
        self._replica_loaded = True
        restored = False
        for item_id, value in ctx.get_broadcast_state(ITEMS_DESCRIPTOR).items():
            restored = True
            if item_id != REPLICA_MARKER and item_id not in self.side.replica:
                self.side.apply_stored(as_replica_value(value))  # the layout before 2
        if restored:
            started = time.monotonic()
            latest = read_latest(self.changelog.settings, self.changelog.topic)
            for at in range(0, len(latest), 4096):
                self.side.apply_changelog(latest[at:at + 4096])
            log.info("replica refilled from %s after a restore: %d items, %.1f s",
                     self.changelog.topic, len(self.side.replica), time.monotonic() - started)
            self._items_gauge.set(float(len(self.side.replica)))

    def _ensure_blends(self, shards: Iterable[int]) -> None:
        # Every shard keeps its subtask's blends from each barrier's marker on, so after a
        # restore the first of the first element's shards that has them gives them back
        # (after a rescale, any of the old subtasks' blends serve: their weights are alike).
        if self._blends_checked:
            return
        self._blends_checked = True
        for shard in shards:
            self._use_shard(shard)
            blob = self.blends.value()
            if blob is None:
                continue
            try:
                restored = self.side.restore_blends(blob)
            except ValueError as e:  # an older layout: the blends relearn, as caches would
                log.warning("score blends in shard %d's state not restored (%s): they start "
                            "from their initial weights", shard, e)
                return
            log.info("score blends restored from shard %d's state: variants %s, %d chances "
                     "to learn taken before", shard, ", ".join(restored),
                     self.side.blend_schedule.chances)
            return

    def _use_shard(self, shard: int) -> None:
        """Make ``shard`` the current key: the state and timers used next are its own."""
        self._key_switch.setCurrentKey(self._backend, self._keys[shard])

    def _current_shard(self, ctx: Any) -> int:
        key = ctx.get_current_key()
        return self._shard_of_key[key if isinstance(key, int) else key[0]]

    def _load(self, users: Mapping[str, int], now: int) -> dict[str, bytes | None]:
        """The stored values of these users (-> shard), each read under its shard's key."""
        by_shard: dict[int, list[str]] = {}
        for user_id, shard in users.items():
            by_shard.setdefault(shard, []).append(user_id)
        out: dict[str, bytes | None] = {}
        for shard, ids in by_shard.items():
            self._use_shard(shard)
            out.update(self.users.get_many(ids, now))
        return out

    def process_element(self, value: Row, ctx: Any) -> Iterator[bytes]:
        self._ensure_replica(ctx)
        if is_barrier_marker(value[1]):
            # One marker per shard, under its key, before each barrier: the checkpoint keeps
            # the blends, and exactly-once lists owed now would commit one checkpoint later
            # than the events they reflect, so they are scored before the barrier.
            self.shard_count.check(ctx)
            self._ensure_blends([value[0]])
            self.blends.update(self.side.kept_blends())
            owed_now = list(unpack_due(self.owed.value()))
            if owed_now:
                self.owed.clear()
                yield from self._refresh(dict.fromkeys(owed_now, value[0]))
            return
        records = decode_record_bundle(value[1])
        self._ensure_blends(sorted({r.shard for r in records}))
        if self._fault is not None:
            for _ in records:
                self._applied += 1
                self._fault.check(self._applied)
        now = now_ms()
        # Owed lists already due go with the bundle's: one call instead of a timer's too.
        owed: dict[int, dict[str, int]] = {}
        due: dict[str, int] = {}
        for shard in sorted({r.shard for r in records}):
            self._use_shard(shard)
            self.shard_count.check(ctx)
            owed[shard] = unpack_due(self.owed.value())
            due.update((u, shard) for u, t in owed[shard].items() if t <= now)
        result = self.side.process(records, lambda users: self._load(users, now), now, due)
        for shard, shard_owed in owed.items():
            new = {u: t for u, t in result.owed.items() if result.shards[u] == shard}
            done = [u for u, s in due.items() if s == shard]
            if not (done or new):
                continue
            self._use_shard(shard)
            for u in done:
                del shard_owed[u]
            shard_owed.update(new)
            if shard_owed:
                self.owed.update(pack_due(shard_owed))
            else:
                self.owed.clear()
            if new:
                ctx.timer_service().register_processing_time_timer(
                    refresh_timer(min(new.values()), self.settings.refresh_interval_ms))
        yield from self._finish(result)
        self._use_shard(value[0])  # back to the key Flink set for this bundle

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[bytes]:
        self._ensure_replica(ctx)
        shard = self._current_shard(ctx)
        self._ensure_blends([shard])
        due = _take_due(self.owed, timestamp, ctx, self.settings.refresh_interval_ms)
        if due:
            yield from self._refresh(dict.fromkeys(due, shard))
            self._use_shard(shard)

    def _refresh(self, users: Mapping[str, int]) -> Iterator[bytes]:
        """Score the owed lists of these users (-> shard)."""
        now = now_ms()
        yield from self._finish(self.side.refresh(
            users, lambda ids: self._load(ids, now), now))

    def _finish(self, result: UserBundleResult) -> Iterator[bytes]:
        """Each shard's writes and removals under its key, metrics, the output."""
        now = now_ms()
        writes: dict[int, dict[str, bytes]] = {}
        for user_id, value in result.writes.items():
            writes.setdefault(result.shards[user_id], {})[user_id] = value
        for shard, values in writes.items():
            self._use_shard(shard)
            self.users.put_all(values, now)
        for user_id in result.removes:
            self._use_shard(result.shards[user_id])
            self.users.remove(user_id)
        self._record(result.stats)
        if len(result.output):
            yield result.output.to_bytes()

    def _record(self, stats: BundleStats) -> None:
        for event_type, n in stats.consumed.items():
            self.metrics.counter("freshrec_job_events_consumed_total", event_type).inc(n)
        for code, n in stats.invalid.items():
            self.metrics.counter("freshrec_job_events_invalid_total", code).inc(n)
        c = self._counters
        for name, n in (("dlq_writes_total", stats.dead_letters),
                        ("duplicates_dropped_total", stats.duplicates),
                        ("refreshes_coalesced_total", stats.coalesced),
                        ("recommendations_published_total", stats.published),
                        ("recommendations_cold_start_total", stats.cold_start),
                        ("tombstones_published_total", stats.tombstones),
                        ("drift_detections_total", stats.drifts)):
            if n:
                c[name].inc(n)
        for name, counts in (("lists", stats.variant_lists), ("tests", stats.variant_tests),
                             ("hits", stats.variant_hits),
                             ("hits_at_10", stats.variant_hits_at_10)):
            for labels, n in counts.items():
                if n:
                    self.metrics.counter(f"freshrec_job_experiment_{name}_total",
                                         *labels).inc(n)
        if stats.new_users:
            self._n_users += stats.new_users
            self._users_gauge.set(float(self._n_users))
        side = self.side
        self._loss_gauge.set(side.loss.mean)
        for variant, blend in side.serving_blends().items():
            self.metrics.gauge("freshrec_job_blend_sampled_serving", variant).set(
                float(blend.active is blend.sampled))
        if stats.scored:
            self._batch_size.set(float(stats.scored))
            self._hit_rate.set(side.rolling.hit_rate)
            self._recall10.set(side.rolling.recall_at_10)
            self._ndcg.set(side.rolling.ndcg)
            self._event_latency.observe_many(stats.event_latency_s)
            self._ingest_latency.observe_many(stats.ingest_latency_s)

    def process_broadcast_element(self, value: Row, ctx: Any) -> list[Any]:
        if not self._marked:
            self._ensure_replica(ctx)
            state = ctx.get_broadcast_state(ITEMS_DESCRIPTOR)
            # items(): the embedded broadcast state's keys() calls a method Java lacks.
            if [k for k, _ in state.items()] != [REPLICA_MARKER]:
                state.clear()  # items of the layout before 2: in the replica now
                state.put(REPLICA_MARKER, b"")
            self._marked = True
        applied, newest = self.side.apply_changelog(decode_record_bundle(value[1]))
        if applied:
            self._staleness.set(max(now_ms() - newest, 0) / 1000.0)
            self._items_gauge.set(float(len(self.side.replica)))
        return []


class ItemUpdate(KeyedProcessFunction):
    """Keyed by item shard: applies bundles of gradients and upserts (:class:`ItemSide`),
    publishes each changed item to the changelog when its publish time comes."""

    def __init__(self, config: ModelConfig, publish_interval_ms: int,
                 background_publish_interval_ms: int, dedup_window_s: int,
                 item_shards: int, state_cache_entries: int) -> None:
        self.config = config
        self.item_shards = item_shards
        self.state_cache_entries = state_cache_entries
        self.publish_interval_ms = publish_interval_ms
        self.background_publish_interval_ms = background_publish_interval_ms
        self.dedup_window_s = dedup_window_s

    def open(self, runtime_context: RuntimeContext) -> None:
        quiet_garbage_collector()
        quiet_debug_logs()
        self.side = ItemSide(self.config, self.publish_interval_ms,
                             self.background_publish_interval_ms)
        items, seen, soon, slots = item_state_descriptors(self.dedup_window_s)
        self.items = CachedMapState(runtime_context.get_map_state(items),
                                    self.state_cache_entries)
        self.seen_ids = runtime_context.get_map_state(seen)
        self.soon = runtime_context.get_list_state(soon)
        self.slots = runtime_context.get_map_state(slots)
        self.unslotted_later = runtime_context.get_list_state(UNSLOTTED_LATER_DESCRIPTOR)
        self.text_map = runtime_context.get_state(TEXT_MAP_DESCRIPTOR)
        self.shard_count = ShardCount(runtime_context, "job.item_shards", self.item_shards)
        metrics = JobMetrics(runtime_context)
        self._published = metrics.counter("freshrec_job_item_updates_published_total")
        self._duplicates = metrics.counter("freshrec_job_duplicates_dropped_total")

    def process_element(self, value: Row, ctx: Any) -> list[Any]:
        self.shard_count.check(ctx)
        text_map = self.text_map.value() if self.side.text_encoder is not None else None
        now = now_ms()
        result = self.side.process(decode_shard_bundle(value[1]),
                                   lambda ids: self.items.get_many(ids, now),
                                   self.seen_ids.contains, now, text_map)
        if result.writes:
            self.items.put_all(result.writes, now)
        if result.text_map is not None:
            self.text_map.update(result.text_map)
        if result.upsert_ids:
            self.seen_ids.put_all(dict.fromkeys(result.upsert_ids, True))
        if result.duplicates:
            self._duplicates.inc(result.duplicates)
        timers = ctx.timer_service()
        if result.soon:
            self.soon.add_all(result.soon)
            timers.register_processing_time_timer(result.soon_at)
        if result.later:
            slots = {}
            for at, ids in result.later.items():
                slots[at] = pack_ids(dict.fromkeys([*unpack_ids(self.slots.get(at)), *ids]))
                timers.register_processing_time_timer(at)
            self.slots.put_all(slots)
        return []

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[bytes]:
        ready: dict[str, None] = {}
        if timestamp % self.publish_interval_ms == 0:
            ready.update(dict.fromkeys(self.soon.get()))
            self.soon.clear()
        slot = self.slots.get(timestamp)
        if slot is not None:
            ready.update(dict.fromkeys(unpack_ids(slot)))
            self.slots.remove(timestamp)
        if timestamp % self.background_publish_interval_ms == 0:
            ready.update(dict.fromkeys(self.unslotted_later.get()))
            self.unslotted_later.clear()
        if not ready:
            return
        ids = list(ready)
        out, n = self.side.publish(ids, self.items.get_many(ids, timestamp))
        if n:
            self._published.inc(n)
            yield out.to_bytes()
