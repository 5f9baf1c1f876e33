"""The job section of ``bench/bench_model.py``: the job's two Python operators timed through
their own code, as the job's bundlers, timers and publish ticks drive them."""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterable, Sequence


def job_path(events: list, dim: int, rate: float, sets: Sequence[str] = (),
             backlog: bool = False, warmup: int = 0) -> dict[str, float | str]:
    """Per-event CPU cost of the job's two Python operators through their own code
    (``flink_jobs.user_side`` / ``item_side`` over bytes, the Flink state a dict), with
    the job's settings (``sets`` overrides them) on generated data arriving at ``rate``
    per second: events bundled as the Java bundler does (at
    ``job.bundle_max_records`` per shard or ``job.bundle_max_age_ms``; one subtask's bundles
    hold all its shards), item messages per item shard
    (``job.item_bundle_max_age_ms``); owed refreshes fire at their due time (the job's
    timers) and items publish at their ticks, their changelog applied to the replica. A
    ``backlog`` fills every user bundle (the source reads ahead) while the clock moves at
    ``rate``, the job's pace; item bundles and publishes keep to that clock. The first
    ``warmup`` events fill the state as a backlog at 3,000/s and are not counted."""
    from flink_jobs.bundles import (
        ITEM_EMBEDDINGS,
        ITEM_GRADIENTS,
        RawRecord,
        decode_output_bundle,
    )
    from flink_jobs.item_side import ItemSide
    from flink_jobs.native_imports import limit_native_threads, quiet_garbage_collector
    from flink_jobs.replica_value import pack_replica_value
    from flink_jobs.shard_keys import shard_of
    from flink_jobs.user_side import UserSide
    from flink_jobs.user_side_types import UserSideSettings
    from freshrec_common.settings import load_settings
    from schemas.events import encode_event
    from schemas.item_embedding import ItemEmbedding

    loaded = load_settings(None, overrides=sets)  # the job's defaults, --set overrides
    job, cfg = loaded.job, loaded.model.replace(dim=dim)
    settings = UserSideSettings(cfg, "bench", "events", job.refresh_interval_ms,
                                job.dedup_window_s, job.dedup_max_ids, job.max_payload_bytes,
                                job.max_id_length, item_shards=job.item_shards)
    users_side = UserSide(settings)
    items_side = ItemSide(cfg, job.item_publish_interval_ms,
                          job.item_background_publish_interval_ms)
    limit_native_threads()  # as in the job's interpreter
    quiet_garbage_collector()  # as the operators do when they open
    user_values: dict[str, bytes] = {}
    item_values: dict[str, bytes] = {}
    text_maps: dict[object, bytes | None] = {}  # per item shard, as the job keeps them
    due: dict[str, int] = {}  # item -> its publish tick
    ticks: list[tuple[int, str]] = []  # a heap of (tick, item); stale entries are skipped
    owed: dict[int, dict[str, int]] = {}  # shard -> user -> when its owed list falls due
    max_n, max_age = job.bundle_max_records, job.bundle_max_age_ms
    flush_age = 10**12 if backlog or warmup else max_age
    user_bundles: dict[int, tuple[int, list[RawRecord]]] = {}  # shard -> (first at, records)
    item_bundles: dict[object, tuple[int, list[bytes]]] = {}
    clock = time.process_time  # CPU time: less sensitive to other load on a shared machine
    t_user = t_item = t_replica = 0.0
    n_lists = n_msgs = n_published = n_user_calls = n_item_calls = 0

    def load_users(ids: Iterable[str]) -> dict[str, bytes | None]:
        return {u: user_values.get(u) for u in ids}

    def load_items(ids: list[str]) -> dict[str, bytes | None]:
        return {i: item_values.get(i) for i in ids}

    start = now = 1_800_000_000_000
    warm_rate = 3_000.0
    flush_all = {warmup - 1, len(events) - 1}  # the end of the warm-up and of the events
    for n, e in enumerate(events):
        if n < warmup:
            now = start + int(n * 1000 / warm_rate)
        else:
            now = start + int(warmup * 1000 / warm_rate) + int((n - warmup) * 1000 / rate)
        if n == warmup and n:  # the timed part begins
            t_user = t_item = t_replica = 0.0
            n_lists = n_msgs = n_published = n_user_calls = n_item_calls = 0
            flush_age = 10**12 if backlog else max_age
        key = e.user_id.encode() if e.user_id else None
        shard = shard_of(e.user_id or e.item_id or "", job.user_shards)
        # One user-update subtask: its bundles hold all shards, as the job's bundler makes them.
        recs = user_bundles.setdefault(0, (now, []))[1]
        recs.append(RawRecord(0, n, now, key, encode_event(e), shard))
        ready = [sh for sh, (at, rs) in user_bundles.items()
                 if len(rs) >= max_n * job.user_shards or now - at >= flush_age
                 or n in flush_all]
        t0 = clock()
        for sh in ready:
            bundle = user_bundles.pop(sh)[1]
            due_now: dict[str, int] = {}
            for rec_shard in {r.shard for r in bundle}:
                shard_owed = owed.setdefault(rec_shard, {})
                due_now.update((u, rec_shard) for u, at in shard_owed.items() if at <= now)
            for u, rec_shard in due_now.items():
                del owed[rec_shard][u]
            res = users_side.process(bundle, load_users, now, due_now)
            n_user_calls += 1
            user_values.update(res.writes)
            for u, at in res.owed.items():
                owed.setdefault(res.shards[u], {})[u] = at
            n_lists += res.stats.published
            for item_shard, m in decode_output_bundle(res.output.to_bytes()).get(
                    ITEM_GRADIENTS, []):
                item_bundles.setdefault(item_shard, (now, []))[1].append(m)
                n_msgs += 1
        for timer_shard, shard_owed in owed.items():  # the timers of shards no bundle came to
            fired = [u for u, at in shard_owed.items() if at <= now]
            if fired:
                for u in fired:
                    del shard_owed[u]
                timer = users_side.refresh(dict.fromkeys(fired, timer_shard), load_users, now)
                n_user_calls += 1
                user_values.update(timer.writes)
                n_lists += timer.stats.published
                timer.output.to_bytes()
        t1 = clock()
        for sh in [sh for sh, (at, ms) in item_bundles.items()
                   if len(ms) >= max_n or now - at >= job.item_bundle_max_age_ms
                   or n in flush_all]:
            done = items_side.process(item_bundles.pop(sh)[1], load_items, lambda _: False,
                                      now, text_maps.get(sh))
            n_item_calls += 1
            item_values.update(done.writes)
            if done.text_map is not None:
                text_maps[sh] = done.text_map
            for at, ids in ((done.soon_at, done.soon), *done.later.items()):
                for item_id in ids:
                    if at < due.get(item_id, at + 1):
                        due[item_id] = at
                        heapq.heappush(ticks, (at, item_id))
        publish = []
        while ticks and ticks[0][0] <= now:
            at, item_id = heapq.heappop(ticks)
            if due.get(item_id) == at:
                del due[item_id]
                publish.append(item_id)
        changelog: list[tuple[bytes, bytes]] = []
        if publish:
            published, k = items_side.publish(publish, item_values)
            n_published += k
            changelog = decode_output_bundle(published.to_bytes()).get(ITEM_EMBEDDINGS, [])
        t2 = clock()
        # The job's changelog bundler packs each record (FR1) in Java: not Python's time.
        packed = [RawRecord(0, 0, now, k, pack_replica_value(ItemEmbedding.from_bytes(v)))
                  for k, v in changelog]
        t2_packed = clock()
        if packed:
            users_side.apply_changelog(packed)
        t3 = clock()
        t_user += t1 - t0
        t_item += t2 - t1
        t_replica += t3 - t2_packed
    n = len(events) - warmup
    per = 1e6 / n
    total = t_user + t_item + t_replica
    print(f"job path {'in a backlog, clock' if backlog else 'at'} {rate:,.0f} events/s, CPU "
          f"time ({n:,} events{f' after {warmup:,} of warm-up' if warmup else ''}; "
          f"{job.user_shards} user "
          f"and {job.item_shards} item shards, bundles of up to {max_n} per shard or {max_age} ms "
          f"({job.item_bundle_max_age_ms} ms for items): "
          f"{n / n_user_calls:.1f} events per user-side call, {n_msgs / n_item_calls:.1f} "
          f"messages per item-side call; {n_lists / n:.2f} lists and "
          f"{n_published / n:.2f} items published per event)")
    print(f"  user side  (decode, learn, score, state bytes)  {t_user * per:7.1f} us/event")
    print(f"  item side  (gradient bundles, publish)           {t_item * per:7.1f} us/event")
    print(f"  replica    (changelog applied)                   {t_replica * per:7.1f} us/event")
    print(f"  total                                            {total * per:7.1f} us/event "
          f"= {n / total:,.0f} events/s on one core")
    return dict(rate=rate, backlog=str(backlog), warmup=warmup, user_shards=job.user_shards,
        item_shards=job.item_shards,
        bundle_max_age_ms=max_age, item_bundle_max_age_ms=job.item_bundle_max_age_ms,
        events_per_user_call=n / n_user_calls,
        messages_per_item_call=n_msgs / n_item_calls, user_us=t_user * per,
        item_us=t_item * per, replica_us=t_replica * per, total_us=total * per,
        events_per_s_one_core=n / total, lists_per_event=n_lists / n,
        published_per_event=n_published / n)
