"""What the state benchmark (:mod:`bench.bench_state`) puts into the job's state: template
users and items built with the model core, the fill job that writes them into keyed state
through the job's own descriptors (a child process, ``python -c "from bench import
state_fill; ..."``), and their raw sizes in Python."""

from __future__ import annotations

import argparse
import pickle
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Imported at module level, as bench.e2e_pipelines does: the UDFs below are pickled by
# reference to this module, and the job's operator module (numpy, river, ...) must be
# imported before any task thread imports it lazily.
import numpy as np
from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext

from flink_jobs.dedup import NO_RECENT_IDS
from flink_jobs.operators import item_state_descriptors, user_state_descriptors
from flink_jobs.shard_keys import shard_of
from flink_jobs.user_value import NO_PENDING, RefreshState, id_hash, pack_user_value
from freshrec.generator import category_label
from online_models.bundle import learn_bundle
from online_models.config import ModelConfig
from online_models.item_gradients import ItemGradients, apply_gradients_to_items
from online_models.item_state import ItemState
from online_models.learning import new_item_state
from online_models.replica import ItemReplica
from online_models.state import UserState
from schemas.events import Event

GOAL_FACTOR = 1.5  # state per user / item at most this many times the raw figure
# Interaction mix of the template users (the generator's storefront is view-heavy).
EVENT_MIX = (("view", 0.6), ("click", 0.2), ("favorite", 0.07), ("add_to_cart", 0.08),
             ("purchase", 0.05))
N_TEMPLATES = 16


@dataclass(frozen=True)
class FillSpec:
    n_items: int
    dedup_ids: int
    events_per_user: int
    event_id_chars: int = 36


def user_id_of(k: int) -> str:
    return f"u{k}"  # the generator's format


def item_id_of(k: int) -> str:
    return f"i{k}"


def item_meta(k: int) -> dict[str, Any]:
    """Metadata of catalogue item k, shaped like the generator's upserts."""
    cat, brand = category_label(k % 40), f"b{k % 300}"
    return {"category": cat, "brand": brand, "price": round(5.0 + (k * 37 % 2000) / 10.0, 2),
            "title": f"{brand} {cat} item {item_id_of(k)}", "available": True}


class UserFactory:
    """Steady-state users learned by the model core, varied per user id."""

    def __init__(self, config: ModelConfig, spec: FillSpec, dedup_window_s: int) -> None:
        self.config, self.spec, self.dedup_window_s = config, spec, dedup_window_s
        self.rng = np.random.default_rng(config.seed)
        self.ids_rng = random.Random(config.seed)
        replica = ItemReplica(config)
        types = [t for t, _ in EVENT_MIX]
        probs = np.array([p for _, p in EVENT_MIX])
        t0 = int(time.time() * 1000) - spec.events_per_user * 60_000
        # (template, history item indices, purchased indices, seen indices)
        self.templates: list[tuple[UserState, list[int], list[int], list[int]]] = []
        for t in range(N_TEMPLATES):
            user = UserState.new(f"template-{t}", config.dim, config.seed)
            index_of: dict[str, int] = {}
            for j in range(spec.events_per_user):
                k = int(self.rng.integers(spec.n_items))
                meta = item_meta(k)
                index_of[item_id_of(k)] = k
                ev = Event(f"t{t}-{j}", str(self.rng.choice(types, p=probs)), t0 + j * 60_000,
                           user.user_id, item_id_of(k), price=meta["price"],
                           category=meta["category"], brand=meta["brand"])
                user = learn_bundle({user.user_id: user}, [ev], replica, config).users.get(
                    user.user_id, user)
            self.templates.append((
                user, [index_of[h[0]] for h in user.history],
                [index_of[i] for i in user.purchased], [index_of[i] for i in user.seen]))

    def user(self, k: int) -> UserState:
        """User k: a template with its own id and vector, ids shifted in the catalogue."""
        tmpl, hist, purchased, seen = self.templates[k % N_TEMPLATES]
        n = self.spec.n_items
        off = self._offset(k)
        dt = (k % 86_400) * 1000
        noise = self.rng.normal(0.0, 0.01, tmpl.vector.shape[0]).astype(np.float32)
        vector = tmpl.vector + noise
        vector.setflags(write=False)
        ids = {i: item_id_of((i + off) % n) for i in {*hist, *purchased, *seen}}
        history = tuple((ids[i], h[1] + dt, h[2], h[3])
                        for i, h in zip(hist, tmpl.history, strict=True))
        return UserState(
            user_id_of(k), vector, tmpl.acc, history, frozenset(map(ids.__getitem__, purchased)),
            frozenset(map(ids.__getitem__, seen)), tmpl.n_events, tmpl.last_ts + dt)

    def _offset(self, k: int) -> int:
        """Where user k's items start in the catalogue."""
        return (k * 7919) % self.spec.n_items

    def shown(self, k: int) -> tuple[str, ...]:
        """The ids of the list user k was shown last: its own ``top_k`` catalogue items."""
        n, off = self.spec.n_items, self._offset(k)
        return tuple(item_id_of((off + 101 * j) % n) for j in range(self.config.top_k))

    def event_ids(self) -> list[str]:
        """``dedup_ids`` fresh event ids (UUID text by default, as storefronts send)."""
        n, c = self.spec.dedup_ids, self.spec.event_id_chars
        if n == 0:
            return []
        h = self.ids_rng.randbytes(16 * n).hex()
        if c == 36:
            return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-"
                    f"{h[i + 20:i + 32]}" for i in range(0, 32 * n, 32)]
        return [(h[i:i + 32] * (c // 32 + 1))[:c] for i in range(0, 32 * n, 32)]

    def value(self, k: int, now_ms: int) -> bytes:
        """User k's value in UserUpdate's ``users`` MapState after its last refresh (nothing
        pending, ``dedup_ids`` recent event ids, the list it was shown)."""
        return pack_user_value(*self.parts(k, now_ms))

    def parts(self, k: int, now_ms: int) -> tuple[bytes, RefreshState]:
        """User k's ``UserState`` bytes and ``RefreshState``."""
        user = self.user(k)
        ids = self.event_ids()
        # Sent at random times within the window (their ages differ, as a real user's do).
        now_s = now_ms // 1000
        seconds = sorted(now_s - self.ids_rng.randrange(self.dedup_window_s) for _ in ids)
        recent = NO_RECENT_IDS
        for event_id, sent_s in zip(ids, seconds, strict=True):
            recent = recent.add(event_id, sent_s, self.dedup_window_s, len(ids))
        refresh = RefreshState(seq=user.n_events, last_refresh_ms=now_ms, timer_pending=False,
                               last_event_ts=user.last_ts,
                               pending=NO_PENDING,
                               shown_hashes=tuple(map(id_hash, self.shown(k))),
                               recent_ids=recent)
        return user.to_bytes(), refresh


def make_item(config: ModelConfig, k: int, rng: np.random.Generator) -> ItemState:
    """Item k as ItemUpdate keeps it after an upsert and a few learned gradients."""
    meta = item_meta(k)
    item = new_item_state(item_id_of(k), config, meta)
    ts = int(time.time() * 1000)
    for j in range(3):
        grad = rng.normal(0.0, 0.05, (1, config.dim)).astype(np.float32)
        step = ItemGradients([item.item_id], grad,
                             np.array([rng.normal(0.0, 0.1)], dtype=np.float32),
                             np.array([1.0 if j == 0 else 0.0]), np.array([j == 0], np.int32),
                             np.array([ts + j]), [None])
        item = apply_gradients_to_items({item.item_id: item}, step, config)[item.item_id]
    return item


# Shards of the filled state (job.user_shards, job.item_shards; 4 by default, 32 here as
# for a job planned for up to 32 subtasks: the bytes per user do not depend on it).
SHARDS = 32


def _index(row: Any) -> int:
    return int(bytes(row[5]))


def user_key(row: Any) -> int:
    return shard_of(user_id_of(_index(row)), SHARDS)


def item_key(row: Any) -> int:
    return shard_of(item_id_of(_index(row)), SHARDS)


class UserFill(KeyedProcessFunction):
    """UserUpdate's state, filled once per key from the model core's steady-state user."""

    def __init__(self, config: ModelConfig, spec: FillSpec, dedup_window_s: int,
                 user_ttl_days: int) -> None:
        self.config, self.spec = config, spec
        self.dedup_window_s, self.user_ttl_days = dedup_window_s, user_ttl_days

    def open(self, runtime_context: RuntimeContext) -> None:
        # Exactly UserUpdate's descriptors and TTL.
        users, *_ = user_state_descriptors(self.user_ttl_days)
        self.user_state = runtime_context.get_map_state(users)
        self.factory = UserFactory(self.config, self.spec, self.dedup_window_s)
        self.filled = runtime_context.get_metrics_group().add_group("bench").counter(
            "users_filled")

    def process_element(self, row: Any, ctx: Any) -> list[Any]:
        k = _index(row)
        self.user_state.put(user_id_of(k), self.factory.value(k, int(time.time() * 1000)))
        self.filled.inc()
        return []


class ItemFill(KeyedProcessFunction):
    """ItemUpdate's state: the item's value; its upsert ids and publish schedule stay empty."""

    def __init__(self, config: ModelConfig, dedup_window_s: int) -> None:
        self.config, self.dedup_window_s = config, dedup_window_s

    def open(self, runtime_context: RuntimeContext) -> None:
        items, seen, _, _ = item_state_descriptors(self.dedup_window_s)
        self.item_state = runtime_context.get_map_state(items)
        self.seen_ids = runtime_context.get_map_state(seen)
        self.rng = np.random.default_rng(self.config.seed)
        self.filled = runtime_context.get_metrics_group().add_group("bench").counter(
            "items_filled")

    def process_element(self, row: Any, ctx: Any) -> list[Any]:
        k = _index(row)
        self.item_state.put(item_id_of(k), make_item(self.config, k, self.rng).to_bytes())
        self.filled.inc()
        return []


def fill_main(argv: list[str]) -> int:
    """The fill job (child process): two Kafka sources, two keyed fill operators."""
    from pyflink.common import WatermarkStrategy

    from flink_jobs import environment, kafka_io
    from flink_jobs.recommender_job import job_jars
    from freshrec_common.settings import load_settings
    from freshrec_common.settings_args import add_settings_arguments

    ap = argparse.ArgumentParser(prog="bench.state_fill")
    add_settings_arguments(ap)
    ap.add_argument("--users-topic", required=True)
    ap.add_argument("--items-topic", required=True)
    ap.add_argument("--n-items", type=int, required=True)
    ap.add_argument("--dedup-ids", type=int, required=True)
    ap.add_argument("--events-per-user", type=int, required=True)
    ap.add_argument("--event-id-chars", type=int, required=True)
    ap.add_argument("--flink", action="append", default=[],
                    help="extra Flink option key=value (incremental checkpoints, REST port)")
    args = ap.parse_args(argv)
    settings = load_settings(args.config, overrides=args.overrides)
    extra = dict(kv.split("=", 1) for kv in args.flink)
    # Options the job's settings do not cover go into the very Configuration that
    # make_environment builds (and hands to the MiniCluster), on top of the job's own.
    base_conf = environment.flink_configuration

    def with_extra(s: Any) -> Any:
        conf = base_conf(s)
        for k, v in extra.items():
            conf.set_string(k, v)
        return conf

    environment.flink_configuration = with_extra  # type: ignore[assignment]
    env = environment.make_environment(settings, job_jars(settings))
    env.add_python_file(str(Path(__file__).resolve()))
    job, config = settings.job, settings.model
    spec = FillSpec(args.n_items, args.dedup_ids, args.events_per_user, args.event_id_chars)
    group = job.group_id
    users = env.from_source(
        kafka_io.raw_source(settings, args.users_topic, f"{group}-users", "earliest"),
        WatermarkStrategy.no_watermarks(), "kafka-users", kafka_io.RAW_RECORD_TYPE,
    ).uid("source-users")
    (users.key_by(user_key, Types.INT())
     .process(UserFill(config, spec, job.dedup_window_s, job.user_state_ttl_days))
     .name("user-fill").uid("user-fill"))
    items = env.from_source(
        kafka_io.raw_source(settings, args.items_topic, f"{group}-items", "earliest"),
        WatermarkStrategy.no_watermarks(), "kafka-items", kafka_io.RAW_RECORD_TYPE,
    ).uid("source-items")
    (items.key_by(item_key, Types.INT())
     .process(ItemFill(config, job.dedup_window_s)).name("item-fill").uid("item-fill"))
    env.execute("freshrec-state-bench")
    return 0


def raw_sizes(config: ModelConfig, spec: FillSpec, dedup_window_s: int, sample: int = 2000
              ) -> dict[str, Any]:
    """What the state holds before Flink touches it, averaged over ``sample`` users/items."""
    factory = UserFactory(config, spec, dedup_window_s)
    now = int(time.time() * 1000)
    acc: dict[str, float] = {}

    def add(key: str, v: float) -> None:
        acc[key] = acc.get(key, 0.0) + v

    step = max(1, 1_000_003 // sample)
    for k in range(0, sample * step, step):
        blob, refresh = factory.parts(k, now)
        user = UserState.from_bytes(blob)
        ulen = len(user.user_id.encode())
        hist_ids = sum(len(h[0].encode()) + 1 for h in user.history)
        purchased = sum(len(i.encode()) + 1 for i in user.purchased)
        seen = sum(len(i.encode()) + 1 for i in user.seen)
        add("user_state_bytes", len(blob))
        add("pickled_value_bytes", len(pickle.dumps(pack_user_value(blob, refresh))))
        add("vector", 4 * user.vector.shape[0])
        # Per entry: int32 ts offset, float32 weight, type code (v3) or int64, float64, type.
        entry = 9 if blob.startswith(b"FU3") else 17
        add("history_columns", entry * len(user.history))
        add("history_ids", hist_ids)
        add("purchased_ids", purchased)
        add("seen_ids", seen)
        add("user_id", ulen)
        add("header", len(blob) - 4 * user.vector.shape[0] - entry * len(user.history)
            - ulen - hist_ids - purchased - seen)
        add("history_entries", len(user.history))
        add("purchased_n", len(user.purchased))
        add("seen_n", len(user.seen))
        add("recent_ids_bytes", len(refresh.recent_ids.packed))
    out = {k: round(v / sample, 1) for k, v in acc.items()}
    # What the value adds to the UserState bytes: recent ids, packed RefreshState, pickle.
    out["value_overhead"] = round(out["pickled_value_bytes"] - out["user_state_bytes"], 1)
    # Bounded history = history_len entries as UserState stores them: UTF-8 item id + NUL
    # separator + the entry's columns (see ``entry`` above).
    out["bounded_history_bytes"] = round(out["history_columns"] + out["history_ids"], 1)
    dim = config.dim
    out["vector_bytes"] = 4 * dim
    out["goal_user_bytes"] = GOAL_FACTOR * (4 * dim + out["bounded_history_bytes"])
    rng = np.random.default_rng(config.seed)
    items = [make_item(config, k, rng) for k in range(0, sample * 50, 50)]
    out["item_state_bytes"] = round(sum(len(i.to_bytes()) for i in items) / sample, 1)
    out["item_pickled_bytes"] = round(
        sum(len(pickle.dumps(i.to_bytes())) for i in items) / sample, 1)
    out["item_metadata_text"] = round(sum(
        len("\x00".join((i.item_id, i.category or "", i.brand or "", i.title or "")).encode())
        for i in items) / sample, 1)
    out["goal_item_bytes"] = GOAL_FACTOR * 4 * dim
    return out
