"""What user-update does with a bundle, as plain Python over bytes (no Flink import).

The Flink operator (:mod:`flink_jobs.operators`) reads each user's stored value once per
bundle, hands the bundle to :meth:`UserSide.process`, writes the returned values back with
one ``put_all`` and emits the returned :class:`~flink_jobs.bundles.OutputBundle`. One call:
decode and validate every record (bad ones become dead letters, one by one), pseudonymise,
de-duplicate, ``forget_user``, the bundle learning step for all users (each user's events in
order), the owed refreshes scored together, and the item gradients summed per item and sent
as one record per item shard. Lists owed to users refreshed less than
``refresh_interval_ms`` ago are scored later by :meth:`UserSide.refresh`, on a grid of
:data:`REFRESH_TICKS` per interval (:func:`refresh_due`).
"""

from __future__ import annotations

import dataclasses
import logging
import struct
from collections.abc import Iterable, Mapping
from types import MappingProxyType

import numpy as np

from flink_jobs.bundles import (
    COVISIT_MESSAGE,
    DEAD_LETTERS,
    GRADIENT_MESSAGE,
    ITEM_GRADIENTS,
    RECOMMENDATIONS,
    UPSERT_MESSAGE,
    OutputBundle,
    RawRecord,
)
from flink_jobs.dedup import NO_RECENT_IDS, RecentIdsWindow
from flink_jobs.replica_value import as_replica_value, unpack_replica_columns
from flink_jobs.shard_keys import shard_of
from flink_jobs.user_side_types import (
    BundleStats,
    Loader,
    UserBundleResult,
    UserSideSettings,
    now_ms,
    refresh_due,
)
from flink_jobs.user_value import (
    NO_PENDING,
    Pending,
    RefreshState,
    id_hash,
    pack_user_value,
    unpack_user_value,
)
from freshrec_common.privacy import pseudonymize
from online_models.blend import (
    BlendSchedule,
    BlendSelection,
    UserFeatures,
    pack_blends,
    unpack_blends,
    users_features,
)
from online_models.bundle import BundleStep, learn_bundle
from online_models.config import ModelConfig
from online_models.covisit import CoVisitTable
from online_models.experiments import trending_list
from online_models.learning import apply_item_embedding
from online_models.model import cold_start_bonus, learn_cold_start
from online_models.replica import ItemReplica
from online_models.scoring import blend_step, query_vector, recommend_for_users
from online_models.state import UserState
from online_models.streaming import DriftMonitor, PrequentialWindow, RollingMean, UserClusters
from schemas.dlq import DeadLetter, encode_dead_letter
from schemas.event_fields import DecodeError
from schemas.events import Event, decode_event
from schemas.recommendation import Recommendation, ScoredItem

log = logging.getLogger(__name__)
DEFAULT_VARIANT = "default"  # the variant label of metrics when no experiment runs


class UserSide:
    """The user side of the job for one operator instance: the item replica (a cache of the
    changelog, co-visitation neighbours included), the cold-start clusters, the score blends
    (kept in Flink state by the operator: :meth:`kept_blends`) and the live prequential
    metrics (caches: rebuilt from the changelog and relearned after a restore)."""

    def __init__(self, settings: UserSideSettings, pseudonym_key: bytes | None = None) -> None:
        self.settings = settings
        self.config = settings.config
        cfg = self.config
        self.replica = ItemReplica(cfg)
        self.clusters = UserClusters(cfg.n_clusters, cfg.dim, cfg.seed, cfg.trend_half_life_s)
        self.covisit = CoVisitTable(cfg.covisit_neighbours, self.replica.table.index)
        self.blend = BlendSelection.initial(cfg)
        # It starts from sensible weights: a few hundred steps, then one chance in 32.
        self.blend_schedule = BlendSchedule(200, 32)
        # An experiment's variants: settings and score blend each; the rest is shared.
        self.experiment = settings.experiment
        self.variant_configs: dict[str | None, ModelConfig] = {None: cfg}
        self.blends: dict[str | None, BlendSelection] = {None: self.blend}
        if self.experiment is not None:
            for name in self.experiment.names:
                vcfg = self.variant_configs[name] = self.experiment.config(name, cfg)
                self.blends[name] = BlendSelection.initial(vcfg)
        self.rolling = PrequentialWindow(cfg.top_k)
        self.drift = DriftMonitor()
        self.loss = RollingMean(1000)
        self._key = pseudonym_key

    # -- records in -----------------------------------------------------------------------
    def decode(self, records: Iterable[RawRecord], stats: BundleStats, out: OutputBundle,
               now: int, shards: dict[str, int]
               ) -> tuple[list[tuple[Event, int]], list[tuple[str, bytes]]]:
        """Valid user events with their Kafka time, and item upserts (item id, raw bytes);
        every invalid record becomes a dead letter in ``out``. ``shards`` gets each event's
        user (as the state knows it) and the shard of its record."""
        s = self.settings
        events: list[tuple[Event, int]] = []
        upserts: list[tuple[str, bytes]] = []
        for rec in records:
            result = decode_event(rec.value, s.max_payload_bytes, s.max_id_length)
            if isinstance(result, DecodeError):
                stats.invalid[result.code] = stats.invalid.get(result.code, 0) + 1
                stats.dead_letters += 1
                dead = DeadLetter.build(rec.value, rec.key, result.code, result.field,
                                        result.message, s.events_topic, rec.partition,
                                        rec.offset, now)
                out.keyed(DEAD_LETTERS, rec.key, encode_dead_letter(dead))
                continue
            stats.consumed[result.event_type] = stats.consumed.get(result.event_type, 0) + 1
            if result.event_type == "item_upsert":
                assert result.item_id is not None and rec.value is not None
                upserts.append((result.item_id, rec.value))
                continue
            if self._key is not None and result.user_id is not None:
                result = dataclasses.replace(result, user_id=pseudonymize(self._key,
                                                                          result.user_id))
            events.append((result, rec.timestamp))
            if result.user_id is not None:
                shards[result.user_id] = rec.shard
        return events, upserts

    # -- the bundle -----------------------------------------------------------------------
    def process(self, records: Iterable[RawRecord], load: Loader, now: int | None = None,
                due: Mapping[str, int] = MappingProxyType({})) -> UserBundleResult:
        """Everything user-update does with one bundle; ``load`` returns the stored values
        of the given users (missing or None: a new user). ``due``: users (-> shard) whose
        owed list has fallen due, scored in this call with the bundle's lists rather than by
        a timer call of their own (users no longer owed one are skipped)."""
        now = now_ms() if now is None else now
        s, cfg = self.settings, self.config
        stats, out = BundleStats(), OutputBundle()
        shard_of_user = dict(due)
        events, upserts = self.decode(records, stats, out, now, shard_of_user)
        for item_id, raw in upserts:
            out.sharded(ITEM_GRADIENTS, shard_of(item_id, s.item_shards), UPSERT_MESSAGE + raw)
        user_ids = list(dict.fromkeys(e.user_id for e, _ in events if e.user_id is not None))
        due_set = set(due)
        stored = load(shard_of_user)
        blobs: dict[str, bytes | None] = {}
        refresh: dict[str, RefreshState] = {}
        for uid in user_ids:
            value = stored.get(uid)
            if value is None:
                blobs[uid], refresh[uid] = None, RefreshState()
            else:
                blobs[uid], refresh[uid] = unpack_user_value(value)
        # Events to learn per user: only those after the user's last forget_user.
        to_learn: dict[str, list[Event]] = {}
        pending: dict[str, list[tuple[Event, int]]] = {}
        windows: dict[str, RecentIdsWindow] = {}
        forgotten: set[str] = set()
        now_s = now // 1000
        for event, ingest_ms in events:
            uid = event.user_id
            assert uid is not None
            ids = windows.get(uid)
            if ids is None:
                ids = windows[uid] = RecentIdsWindow(refresh[uid].recent_ids, now_s,
                                                     s.dedup_window_s)
            if not ids.add(event.event_id, now_s):
                stats.duplicates += 1
                continue
            if event.event_type == "forget_user":
                if blobs[uid] is not None or uid in to_learn:
                    stats.new_users -= 1
                # Every piece of the user's state goes; a new list's seq restarts after it.
                refresh[uid] = RefreshState()
                windows[uid] = RecentIdsWindow(NO_RECENT_IDS, now_s, s.dedup_window_s)
                blobs[uid] = None
                to_learn.pop(uid, None)
                pending.pop(uid, None)
                forgotten.add(uid)
                continue
            if blobs[uid] is None and uid not in to_learn:
                stats.new_users += 1
            to_learn.setdefault(uid, []).append(event)
            pending.setdefault(uid, []).append((event, ingest_ms))
        for uid, evs in pending.items():
            rs = refresh[uid]
            p = rs.pending
            last = evs[-1][0]
            items = [e.item_id for e, _ in evs if e.item_id is not None]
            refresh[uid] = dataclasses.replace(
                rs, last_event_ts=last.ts_ms, last_event_id=last.event_id,
                pending=Pending(
                    (*p.items, *items), (*p.event_ts, *(e.ts_ms for e, _ in evs)),
                    (*p.ingest_ts, *(t for _, t in evs)),
                    (*p.weights, *(max(cfg.event_weight(e.event_type), 0.0)
                                   for e, _ in evs if e.item_id is not None))),
                recent_ids=windows[uid].packed(s.dedup_max_ids))
        for uid in forgotten:
            out.keyed(RECOMMENDATIONS, uid.encode("utf-8"), None)
            stats.tombstones += 1
        keep = {id(e) for evs in to_learn.values() for e in evs}
        learn_events = [e for e, _ in events if id(e) in keep]
        users = {uid: UserState.from_bytes(b) for uid in to_learn
                 if (b := blobs[uid]) is not None}
        self._learn_blend(users, learn_events)
        learned: dict[str, UserState] = {}
        # One learning step per variant (its users' events under its settings); the items'
        # gradients of every variant go to the one shared item side.
        for variant, group in self._by_variant(learn_events).items():
            step = learn_bundle(users, group, self.replica, self.variant_configs[variant])
            self.loss.update_many(step.losses)
            learned.update(step.users)
            if s.learn_items:
                self._send_item_messages(step, out)
        new_users = {uid: learned.get(uid) or users.get(uid)
                     or UserState.new(uid, cfg.dim, cfg.seed) for uid in to_learn}
        writes: dict[str, bytes] = {}
        owed: dict[str, int] = {}
        due_now: list[str] = []
        for uid in new_users:
            rs = refresh[uid]
            if rs.timer_pending and uid not in due_set:
                stats.coalesced += 1
            elif rs.timer_pending or now - rs.last_refresh_ms >= s.refresh_interval_ms:
                due_now.append(uid)
            else:
                stats.coalesced += 1
                refresh[uid] = dataclasses.replace(rs, timer_pending=True)
                owed[uid] = refresh_due(rs.last_refresh_ms, s.refresh_interval_ms)
        to_score = {uid: (new_users[uid], refresh[uid]) for uid in due_now}
        # Owed lists of users without events here: their state goes back as it came.
        owed_only: dict[str, bytes] = {}
        for uid in due_set.difference(new_users, forgotten):
            value = stored.get(uid)
            if value is None:
                continue
            blob, rs = unpack_user_value(value)
            if rs.timer_pending and blob:
                owed_only[uid] = blob
                to_score[uid] = (UserState.from_bytes(blob), rs)
        lists = self._score(to_score, now, out, stats)
        refresh.update(lists)
        for uid, user in new_users.items():
            writes[uid] = pack_user_value(user.to_bytes(), refresh[uid])
        for uid, blob in owed_only.items():
            writes[uid] = pack_user_value(blob, lists[uid])
        removes = [uid for uid in forgotten if uid not in to_learn]
        shards = {uid: shard_of_user[uid] for uid in (*writes, *removes)}
        return UserBundleResult(writes, removes, owed, out, stats, shards)

    def serving_blends(self) -> dict[str, BlendSelection]:
        """The blend selection of each experiment variant by name, or the one of the
        settings as ``default`` when no experiment runs (its users' lists use it)."""
        if self.experiment is None:
            return {DEFAULT_VARIANT: self.blend}
        return {name: b for name, b in self.blends.items() if name is not None}

    def kept_blends(self) -> bytes:
        """The score blends and their schedule as the operator keeps them in Flink state
        (:func:`~online_models.blend.pack_blends`; ``""`` names the settings' own)."""
        return pack_blends(self.blend_schedule.chances,
                           {name or "": b for name, b in self.blends.items()})

    def restore_blends(self, blob: bytes) -> list[str]:
        """Take the blends of :meth:`kept_blends` back, at the learning rates of today's
        settings; blends of variants the settings no longer have are left out. Returns the
        names restored."""
        chances, kept = unpack_blends(blob)
        restored = []
        for name, selection in kept.items():
            variant = name or None
            if variant not in self.blends:
                continue
            lr = self.variant_configs[variant].blend_learning_rate
            selection.ranked.learning_rate = selection.sampled.learning_rate = lr
            self.blends[variant] = selection
            restored.append(name or DEFAULT_VARIANT)
        self.blend = self.blends[None]
        self.blend_schedule.chances = chances
        return restored

    def variant_of(self, user_id: str) -> str | None:
        """The user's experiment variant (``None`` when no experiment runs)."""
        return None if self.experiment is None else self.experiment.variant_of(user_id)

    def _by_variant(self, events: list[Event]) -> dict[str | None, list[Event]]:
        """Events grouped by their user's variant, each group in arrival order."""
        if self.experiment is None:
            return {None: events}
        groups: dict[str | None, list[Event]] = {}
        for ev in events:
            groups.setdefault(self.variant_of(ev.user_id or ""), []).append(ev)
        return groups

    def _send_item_messages(self, step: BundleStep, out: OutputBundle) -> None:
        """A step's item gradients and co-visitation pairs, one message per item shard."""
        n_shards = self.settings.item_shards
        for ids, payload, kind in ((step.gradients.item_ids, step.gradients, GRADIENT_MESSAGE),
                                   (step.covisits.a, step.covisits, COVISIT_MESSAGE)):
            if not len(ids):
                continue
            # The pairs name each item many times: one crc32 per distinct item.
            shard_by_id = {i: shard_of(i, n_shards) for i in dict.fromkeys(ids)}
            shards = np.fromiter(map(shard_by_id.__getitem__, ids), dtype=np.int64,
                                 count=len(ids))
            for shard in np.unique(shards).tolist():
                part = payload.take(np.flatnonzero(shards == shard))
                out.sharded(ITEM_GRADIENTS, shard, kind + part.to_bytes())

    def _learn_blend(self, users: Mapping[str, UserState], events: Iterable[Event]) -> None:
        """Blend steps on known users' positive events (one per user and bundle, on the
        chances the schedule takes), before the bundle is learned, so each is a test of the
        list the user would have had."""
        rep = self.replica
        steps: list[tuple[UserState, int, str | None]] = []
        done: set[str] = set()
        for ev in events:
            uid = ev.user_id
            user = users.get(uid or "")
            row = rep.row(ev.item_id or "")
            variant = self.variant_of(uid or "")
            cfg = self.variant_configs[variant]
            if user is None or uid in done or row < 0 or cfg.event_weight(ev.event_type) <= 0:
                continue
            if self.blend_schedule.take():
                done.add(user.user_id)
                steps.append((user, row, variant))
        # The steps' features do not depend on the blend: built together, per variant.
        features: dict[str, UserFeatures] = {}
        for variant in dict.fromkeys(v for _, _, v in steps):
            cfg = self.variant_configs[variant]
            group = [u for u, _, v in steps if v == variant]
            features.update(zip((u.user_id for u in group), users_features(
                group, rep, cfg, [u.last_ts for u in group], self.covisit,
                [cold_start_bonus(self.clusters, u, rep, cfg) for u in group]), strict=True))
        for user, row, variant in steps:
            blend_step(self.blends[variant], user, rep, self.variant_configs[variant],
                       features[user.user_id], row)

    def refresh(self, users: Mapping[str, int], load: Loader, now: int | None = None
                ) -> UserBundleResult:
        """Score the owed lists of these users (-> shard; a timer fired, no bundle came);
        users no longer owed one (a forget came in between) are skipped."""
        return self.process([], load, now, due=users)

    def _score(self, due: Mapping[str, tuple[UserState, RefreshState]], now: int,
               out: OutputBundle, stats: BundleStats) -> dict[str, RefreshState]:
        """Test-then-learn metrics, cluster learning and one batched scoring for the due
        users; their lists go to ``out``; returns their settled refresh states."""
        if not due:
            return {}
        cfg = self.config
        queries: dict[str, np.ndarray] = {}  # learn_cold_start's (under ``cfg``), for the lists
        for uid, (user, rs) in due.items():
            cell = None if self.experiment is None else self.experiment.cell_of(uid)
            for item in rs.pending.items:
                if rs.shown_hashes:
                    key = id_hash(item)
                    hit = self.rolling.update(rs.shown_hashes, key)
                    if self.drift.update(hit):
                        stats.drifts += 1
                    if cell is not None:
                        stats.variant_tests[cell] += 1
                        stats.variant_hits[cell] += hit
                        stats.variant_hits_at_10[cell] += key in rs.shown_hashes[:10]
            query = learn_cold_start(
                self.clusters, user, self.replica, cfg,
                list(zip(rs.pending.items, rs.pending.weights, strict=True)), rs.last_event_ts)
            if query is not None:
                queries[uid] = query
        lists = self._lists(due, queries)
        stats.scored += len(due)
        settled: dict[str, RefreshState] = {}
        for uid, (user, rs) in due.items():
            items, variant = lists[uid]
            seq = rs.seq + 1
            rec = Recommendation(
                user_id=uid, items=tuple(items), model_version=self.settings.model_version,
                generated_at=now, last_event_ts=rs.last_event_ts,
                last_event_id=rs.last_event_id, seq=seq,
                cold_start=user.n_events < cfg.cold_events, events_applied=user.n_events,
                variant=variant)
            out.keyed(RECOMMENDATIONS, uid.encode("utf-8"), rec.to_bytes())
            stats.published += 1
            if variant is not None:
                stats.variant_lists[(variant,)] += 1
            if rec.cold_start:
                stats.cold_start += 1
            stats.event_latency_s.extend((now - ts) / 1000.0 for ts in rs.pending.event_ts)
            stats.ingest_latency_s.extend((now - ts) / 1000.0 for ts in rs.pending.ingest_ts)
            # The event id only goes into lists, and the next list comes with new events.
            settled[uid] = dataclasses.replace(
                rs, seq=seq, last_refresh_ms=now, timer_pending=False, pending=NO_PENDING,
                last_event_id="", shown_hashes=tuple(id_hash(it.item_id) for it in items))
        return settled

    def _lists(self, due: Mapping[str, tuple[UserState, RefreshState]],
               queries: Mapping[str, np.ndarray]
               ) -> dict[str, tuple[list[ScoredItem], str | None]]:
        """Each due user's list and variant: one batched scoring per variant (the
        trending-only control's users get the trending items). ``queries``: users' query
        vectors under the job's own settings, already computed (the user states have not
        changed since)."""
        groups: dict[str | None, list[str]] = {}
        for uid in due:
            groups.setdefault(self.variant_of(uid), []).append(uid)
        out: dict[str, tuple[list[ScoredItem], str | None]] = {}
        for variant, uids in groups.items():
            cfg = self.variant_configs[variant]
            users = [due[u][0] for u in uids]
            if variant is not None and self.experiment is not None and \
                    self.experiment.variant(variant).trending_only:
                lists = [trending_list(self.replica, u, cfg, cfg.top_k) for u in users]
            else:
                known = queries if cfg is self.config else {}
                qs = [q if (q := known.get(uid)) is not None
                      else query_vector(due[uid][0], self.replica, cfg) for uid in uids]
                features = users_features(
                    users, self.replica, cfg, [u.last_ts for u in users], self.covisit,
                    [cold_start_bonus(self.clusters, u, self.replica, cfg, q)
                     for u, q in zip(users, qs, strict=True)])
                lists = recommend_for_users(users, self.replica, cfg, blend=self.blends[variant],
                                            features=features, queries=qs)
            out.update((u, (items, variant)) for u, items in zip(uids, lists, strict=True))
        return out

    # -- the item changelog -----------------------------------------------------------------
    def apply_changelog(self, records: Iterable[RawRecord]) -> tuple[int, int]:
        """Apply changelog records to the replica (tombstones skipped); returns how many
        were applied and the newest publish time."""
        applied = newest = 0
        for rec in records:
            if rec.key is None or rec.value is None:
                continue
            try:
                value = as_replica_value(rec.value)  # JSON where the bundler left it so
                self.apply_stored(value)
            except (ValueError, struct.error) as exc:
                # Read from the start at every fresh start: a bad record must not stop the job.
                log.warning("item changelog record at %s/%s skipped: %s", rec.partition,
                            rec.offset, exc)
                continue
            applied += 1
            newest = max(newest, rec.timestamp)
        return applied, newest

    def apply_stored(self, value: bytes) -> str:
        """Apply an ``FR1`` value (:mod:`flink_jobs.replica_value`); returns its item id."""
        emb, ids, weights = unpack_replica_columns(value)
        apply_item_embedding(self.replica, emb)
        self.covisit.set_item_columns(emb.item_id, ids, weights, float(emb.n_events))
        return emb.item_id
