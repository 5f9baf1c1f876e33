"""State scale: bytes per user and per item in Flink state, checkpoint size and duration.

The real job learns at ~300 events/s, far too slow to build a million users. This script
runs a small PyFlink job instead (thread mode, built with ``make_environment`` and the job's
jars, so the Flink configuration is the real job's) that fills keyed state exactly as the
real operators lay it out, at full speed:

* ``user-fill``, keyed by user id: the descriptor of ``UserUpdate.open`` -- ValueState
  ``user`` (PICKLED_BYTE_ARRAY of ``pack_user_value(UserState bytes, RefreshState)``, TTL
  ``job.user_state_ttl_days``) -- with a steady-state user: a learned vector, a full history
  of ``model.history_len`` items, the purchased/seen sets the model core builds, and
  ``--dedup-ids`` recent event ids (UUID text, hashed) in its ``RefreshState.recent_ids``;
* ``item-fill``, keyed by item id: the descriptors of ``ItemUpdate.open``, the ValueState
  ``item`` holding ``ItemState.to_bytes()`` of an item with metadata that has learned from
  a few gradients (its inbox list and upsert-id map are empty in steady state).

Users are built by the model core: a few template users learn ``--events-per-user``
events each with ``user_step``; every filled user is a template with its own id, its own
vector (template + noise, so nothing compresses unrealistically) and its history, purchased
and seen ids shifted to other catalogue items. Items go through ``new_item_state`` and
``apply_item_gradient``.

Input: two Kafka topics pre-loaded with N and M tiny records (the index, as ASCII digits),
read with ``flink_jobs.kafka_io.raw_source``. The source stays open after the backlog, so
the job idles and keeps checkpointing. A Flink counter per side (scraped from the Prometheus
reporter) tells when every record is in state; the measured checkpoint is the first one
*triggered* after that moment (from the REST API's checkpoint history, which also gives
the size per operator; Prometheus' ``lastCheckpoint*`` gauges are kept as a cross-check).

Per backend (hashmap, rocksdb full, rocksdb incremental) and user count it reports fill
time, checkpoint size (``checkpointed_size`` = what this checkpoint wrote, ``state_size`` =
full size) and duration, JVM RSS and heap used after a full GC (``jcmd``), the RocksDB local
directory size, and bytes per user / per item against the raw float32 vector (dim * 4)
and against vector + bounded history.

Usage::

    .venv/bin/python -m bench.bench_state                      # 100k and 1M users, 100k items
    .venv/bin/python -m bench.bench_state --users 100000 --backends hashmap --dim 64
    .venv/bin/python -m bench.bench_state --quick               # smoke run (20k users, 5k items)
    .venv/bin/python -m bench.bench_state _plot bench/results/state.json docs/img/state_scale.png

Prints a table and verdicts, writes ``bench/results/state.json`` and the plot.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Imported at module level, as bench_e2e does: the UDFs below are pickled by reference to
# this module, and the job's operator module (numpy, river, ...) must be imported before
# any task thread imports it lazily.
import numpy as np
from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext

from bench.common import CHILD_ENV, REPO_ROOT, RESULTS_DIR, java_pid, rss_mib, sample_sums
from bench.common import scrape as scrape_families
from flink_jobs.dedup import NO_RECENT_IDS
from flink_jobs.operators import item_state_descriptors, user_state_descriptors
from flink_jobs.user_side import shard_of
from flink_jobs.user_value import NO_PENDING, RefreshState, pack_user_value
from freshrec.generator import category_label
from online_models.bundle import learn_bundle
from online_models.config import ModelConfig
from online_models.item_gradients import ItemGradients, apply_gradients_to_items
from online_models.item_state import ItemState
from online_models.learning import new_item_state
from online_models.replica import ItemReplica
from online_models.state import UserState
from schemas.events import Event

GOAL_FACTOR = 1.5
BACKENDS = ("hashmap", "rocksdb", "rocksdb-incremental")
# Interaction mix of the template users (the generator's storefront is view-heavy).
EVENT_MIX = (("view", 0.6), ("click", 0.2), ("favorite", 0.07), ("add_to_cart", 0.08),
             ("purchase", 0.05))
N_TEMPLATES = 16


def say(msg: str) -> None:
    """Progress on stderr, so stdout keeps only the table and verdicts."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ============================================================================ state factories
# Shared by the Flink job (what goes into state) and the driver (raw sizes in Python).

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
        off = (k * 7919) % n
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
        recent = NO_RECENT_IDS
        for event_id in ids:
            recent = recent.add(event_id, now_ms // 1000, self.dedup_window_s, len(ids))
        refresh = RefreshState(seq=user.n_events, last_refresh_ms=now_ms, timer_pending=False,
                               last_event_ts=user.last_ts,
                               last_event_id=ids[-1] if ids else f"e{k}", pending=NO_PENDING,
                               shown=tuple(item_id_of(j) for j in range(self.config.top_k)),
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


# ============================================================================ the fill job

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
        users, _ = user_state_descriptors(self.user_ttl_days)
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

    ap = argparse.ArgumentParser(prog="bench_state _fill-job")
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

    def with_extra(s: Any, restart_attempts: int = 3) -> Any:
        conf = base_conf(s, restart_attempts)
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


# ============================================================================ raw sizes (Python)

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


# ============================================================================ driver helpers

def scrape(port: int) -> dict[str, float]:
    """Prometheus samples of the job, ``name`` -> summed value (over subtasks)."""
    return sample_sums(scrape_families(port))


def rest(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read())


def heap_after_gc_mib(pid: int) -> float | None:
    """Heap used after a full GC: live objects, i.e. the hashmap backend's state on heap."""
    try:
        subprocess.run(["jcmd", str(pid), "GC.run"], capture_output=True, timeout=180,
                       check=True)
        info = subprocess.run(["jcmd", str(pid), "GC.heap_info"], capture_output=True,
                              text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in info.splitlines():
        if "used" in line and "total" in line:  # " garbage-first heap   total 123K, used 45K"
            used = line.split("used", 1)[1].split()[0].rstrip(",")
            return int(used.rstrip("K")) / 1024
    return None


def dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):  # a file removed meanwhile
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def preload(kwargs: dict[str, Any], topic: str, n: int) -> float:
    from kafka import KafkaProducer

    prod = KafkaProducer(**kwargs, acks=1, linger_ms=20, batch_size=512 * 1024)
    t0 = time.perf_counter()
    for k in range(n):
        prod.send(topic, value=b"%d" % k)
        if k and k % 200_000 == 0:
            say(f"  pre-loading {topic}: {k:,}/{n:,}")
    prod.flush(timeout=300)
    prod.close(timeout=10)
    took = time.perf_counter() - t0
    say(f"pre-loaded {n:,} records into {topic} in {took:.1f}s")
    return took


@dataclass
class RunPlan:
    backend: str
    users: int
    items: int
    users_topic: str
    items_topic: str


class FillRun:
    """One fill job: start, wait for the fill, measure the next checkpoint, stop."""

    def __init__(self, plan: RunPlan, args: argparse.Namespace, base_sets: list[str],
                 work: Path) -> None:
        from devstack.processes import free_ports

        self.plan, self.args = plan, args
        self.tag = f"{plan.backend}-{plan.users}-{uuid.uuid4().hex[:6]}"
        self.dir = work / self.tag
        self.dir.mkdir(parents=True)
        # RocksDB names its LOG file after the full path of its instance directory (in the
        # job's flink-logs/): a long io.tmp.dirs makes that name exceed 255 bytes.
        self.tmp = Path(tempfile.mkdtemp(prefix="fbs-", dir="/tmp"))
        self.metrics_port, self.rest_port = free_ports(2)
        rocks = plan.backend.startswith("rocksdb")
        self.sets = [*base_sets,
                     f"job.state_backend={'rocksdb' if rocks else 'hashmap'}",
                     f"job.checkpoint_dir={self.dir / 'checkpoints'}",
                     f"job.metrics_port={self.metrics_port}", "job.parallelism=1",
                     f"job.group_id=bench-state-{self.tag}"]
        self.flink = [f"execution.checkpointing.incremental="
                      f"{'true' if plan.backend == 'rocksdb-incremental' else 'false'}",
                      f"rest.bind-port={self.rest_port}", "rest.bind-address=127.0.0.1",
                      "rest.address=127.0.0.1", f"io.tmp.dirs={self.tmp}"]
        self.log_path = self.dir / "job.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        a = self.args
        cmd = [sys.executable, "-c", "import sys; from bench import bench_state; "
               "sys.exit(bench_state.fill_main(sys.argv[1:]))",
               "--users-topic", self.plan.users_topic, "--items-topic", self.plan.items_topic,
               "--n-items", str(self.plan.items), "--dedup-ids", str(a.dedup_ids),
               "--events-per-user", str(a.events_per_user),
               "--event-id-chars", str(a.event_id_chars)]
        cmd += [x for s in self.sets for x in ("--set", s)]
        cmd += [x for f in self.flink for x in ("--flink", f)]
        env = {**os.environ, **CHILD_ENV}
        if a.heap:
            env["JVM_ARGS"] = f"-Xmx{a.heap}"
        self.proc = subprocess.Popen(cmd, stdout=self.log_path.open("ab"),
                                     stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env,
                                     start_new_session=True)

    def alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            lines = self.log_path.read_text("utf-8", "replace").splitlines()
            causes = [x for x in lines if "Caused by" in x or "Error" in x]
            raise RuntimeError(f"fill job exited with {self.proc.returncode}:\n"
                               + "\n".join(causes[-8:] + lines[-20:]))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=60)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        try:
            return rest(self.rest_port, f"/jobs/{job_id}/checkpoints").get("history", [])
        except Exception:
            return []

    def go(self) -> dict[str, Any]:
        plan, a = self.plan, self.args
        res: dict[str, Any] = {"backend": plan.backend, "users": plan.users,
                               "items": plan.items, "tag": self.tag}
        self.start()
        assert self.proc is not None
        t_launch = time.monotonic()
        say(f"{self.tag}: started (pid {self.proc.pid}, log {self.log_path})")
        t_first = None
        last_print, prev = 0.0, (0.0, 0.0, 0.0)
        peak_rss = 0.0
        jpid = None
        while True:
            self.alive()
            now = time.monotonic()
            m = scrape(self.metrics_port)
            u = m.get("flink_taskmanager_job_task_operator_bench_users_filled", 0.0)
            i = m.get("flink_taskmanager_job_task_operator_bench_items_filled", 0.0)
            jpid = jpid or java_pid(self.proc.pid)
            rss = rss_mib(jpid) if jpid else None
            peak_rss = max(peak_rss, rss or 0.0)
            if t_first is None and u + i > 0:
                t_first = now
            if now - last_print >= 10:
                rate = (u - prev[1]) / max(now - prev[0], 1e-9) if prev[0] else 0.0
                say(f"{self.tag}:   users {u:>10,.0f}/{plan.users:,} ({rate:,.0f}/s), items "
                    f"{i:,.0f}/{plan.items:,}, checkpoints "
                    f"{m.get('flink_jobmanager_job_numberOfCompletedCheckpoints', 0):.0f}, "
                    f"JVM RSS {rss or 0:,.0f} MiB")
                last_print, prev = now, (now, u, i)
            if u >= plan.users and i >= plan.items:
                break
            if t_first is None and now - t_launch > 300:
                raise RuntimeError("no record filled 300 s after launch")
            if now - t_launch > a.fill_timeout:
                raise RuntimeError(f"fill not done after {a.fill_timeout:.0f}s ({u:,.0f} users)")
            time.sleep(0.5)
        t_done = time.monotonic()
        done_ms = time.time() * 1000.0
        fill_s = t_done - (t_first or t_launch)
        res.update(loadavg_at_fill=[round(x, 2) for x in os.getloadavg()],
                   fill_s=round(fill_s, 1), launch_to_filled_s=round(t_done - t_launch, 1),
                   users_per_s=round(plan.users / fill_s, 0),
                   rss_at_fill_mib=round(rss or 0, 0))
        say(f"{self.tag}: FILLED {plan.users:,} users + {plan.items:,} items in {fill_s:.0f}s "
            f"({plan.users / fill_s:,.0f} users/s); waiting for the next checkpoint")
        if fill_s > 360:
            say(f"{self.tag}: note: the fill took more than 6 minutes ({fill_s / 60:.1f} min)")
        job_id = rest(self.rest_port, "/jobs/overview")["jobs"][0]["jid"]
        names = {v["id"]: v["name"] for v in rest(self.rest_port, f"/jobs/{job_id}")["vertices"]}
        # The first checkpoint triggered after every record was observed in state.
        chk = None
        deadline = time.monotonic() + a.checkpoint_timeout
        while chk is None:
            self.alive()
            after = sorted((c for c in self._checkpoints(job_id)
                            if c.get("trigger_timestamp", 0) > done_ms), key=lambda c: c["id"])
            if after and after[0]["status"] in ("COMPLETED", "FAILED"):
                chk = after[0]
                break
            if time.monotonic() > deadline:
                raise RuntimeError("no checkpoint completed after the fill")
            time.sleep(0.5)
        prom = scrape(self.metrics_port)
        if chk["status"] != "COMPLETED":
            raise RuntimeError(f"checkpoint {chk['id']} after the fill failed: {chk}")
        detail = rest(self.rest_port, f"/jobs/{job_id}/checkpoints/details/{chk['id']}")
        per_op = {names.get(vid, vid): {"state_size": t.get("state_size"),
                                        "checkpointed_size": t.get("checkpointed_size")}
                  for vid, t in detail.get("tasks", {}).items()}
        user_op = next((v for k, v in per_op.items() if "user-fill" in k), {})
        item_op = next((v for k, v in per_op.items() if "item-fill" in k), {})
        jm = "flink_jobmanager_job_"
        res["checkpoint"] = {
            "id": chk["id"], "state_size": chk.get("state_size"),
            "checkpointed_size": chk.get("checkpointed_size"),
            "duration_ms": chk.get("end_to_end_duration"),
            "triggered_after_fill_ms": round(chk["trigger_timestamp"] - done_ms),
            "per_operator": per_op,
            "prometheus_last": {k: prom.get(jm + k) for k in (
                "lastCheckpointSize", "lastCheckpointFullSize", "lastCheckpointDuration",
                "numberOfCompletedCheckpoints", "numberOfFailedCheckpoints")},
        }
        res["bytes_per_user_checkpoint"] = round(user_op.get("state_size", 0) / plan.users, 1)
        res["bytes_per_item_checkpoint"] = round(item_op.get("state_size", 0) / plan.items, 1)
        chk_dir = next((p for p in (self.dir / "checkpoints").glob(f"*/chk-{chk['id']}")), None)
        res["checkpoint_dir_bytes"] = dir_bytes(chk_dir) if chk_dir else None
        if plan.backend.startswith("rocksdb"):
            dbs = {p.name: dir_bytes(p) for p in self.tmp.glob("**/job_*_op_*")}
            res["rocksdb_local_bytes"] = sum(dbs.values())
            res["rocksdb_local_dirs"] = dbs
            res["bytes_per_user_rocksdb_local"] = round(
                sum(v for k, v in dbs.items() if _vertex_of(k) in _user_vertices(names)
                    ) / plan.users, 1) if dbs else None
        jpid = java_pid(self.proc.pid)
        res["rss_after_checkpoint_mib"] = round(rss_mib(jpid) or 0, 0) if jpid else None
        res["rss_peak_mib"] = round(max(peak_rss, res["rss_after_checkpoint_mib"] or 0), 0)
        if jpid and not a.no_gc:
            res["heap_after_gc_mib"] = round(heap_after_gc_mib(jpid) or 0, 1)
            res["rss_after_gc_mib"] = round(rss_mib(jpid) or 0, 0)
        # The checkpoints around the fill's end (REST keeps the last 10): with incremental
        # checkpoints the one in flight at the end often uploads most of the last delta.
        res["checkpoint_history"] = [
            {"id": h["id"], "status": h["status"],
             "triggered_after_fill_ms": round(h["trigger_timestamp"] - done_ms),
             "state_size": h.get("state_size"), "checkpointed_size": h.get("checkpointed_size"),
             "duration_ms": h.get("end_to_end_duration")}
            for h in sorted(self._checkpoints(job_id), key=lambda h: h["id"])]
        c = res["checkpoint"]
        say(f"{self.tag}: CHECKPOINT {c['id']} (triggered {c['triggered_after_fill_ms']} ms "
            f"after the fill): full {_mb(c['state_size'])}, written "
            f"{_mb(c['checkpointed_size'])}, {c['duration_ms']} ms; "
            f"{res['bytes_per_user_checkpoint']:,.0f} B/user, "
            f"{res['bytes_per_item_checkpoint']:,.0f} B/item; JVM RSS "
            f"{res['rss_after_checkpoint_mib']} MiB, heap after GC "
            f"{res.get('heap_after_gc_mib')} MiB")
        return res


def _vertex_of(dirname: str) -> str:
    # job_<jobid>_op_<OperatorName>_<operatorId>__<subtask>_<parallelism>__uuid_<uuid>
    return dirname.split("__", 1)[0].rsplit("_", 1)[-1]


def _user_vertices(names: dict[str, str]) -> set[str]:
    # The head operator's id is the vertex id.
    return {vid for vid, name in names.items() if "user-fill" in name}


def _mb(v: Any) -> str:
    return "-" if v is None else f"{v / 1e6:,.1f} MB"


# ============================================================================ report

def derive(results: list[dict[str, Any]], raw: dict[str, Any]) -> None:
    """Per-user heap bytes: hashmap heap minus RocksDB heap at the same size (the RocksDB
    job keeps its state off heap), and the slope between sizes."""
    by = {(r["backend"], r["users"]): r for r in results if "error" not in r}
    for (backend, n), r in by.items():
        if backend != "hashmap" or not r.get("heap_after_gc_mib"):
            continue
        base = by.get(("rocksdb", n)) or by.get(("rocksdb-incremental", n))
        if base and base.get("heap_after_gc_mib"):
            r["heap_state_mib"] = round(r["heap_after_gc_mib"] - base["heap_after_gc_mib"], 1)
            # Includes the items (the same M in every run): charge them at their checkpoint
            # size ratio so that the users' share is not flattered.
            share = (r["bytes_per_user_checkpoint"] * n) / max(
                r["bytes_per_user_checkpoint"] * n + r["bytes_per_item_checkpoint"]
                * r["items"], 1)
            r["bytes_per_user_heap"] = round(r["heap_state_mib"] * 2**20 * share / n, 1)
    hm = sorted((n, r) for (b, n), r in by.items() if b == "hashmap" and r.get("heap_after_gc_mib"))
    for (n1, r1), (n2, r2) in itertools.pairwise(hm):
        r2["bytes_per_user_heap_slope"] = round(
            (r2["heap_after_gc_mib"] - r1["heap_after_gc_mib"]) * 2**20 / (n2 - n1), 1)
    for r in by.values():
        for key in ("bytes_per_user_checkpoint", "bytes_per_user_heap",
                    "bytes_per_user_heap_slope", "bytes_per_user_rocksdb_local"):
            if r.get(key):
                r[key.replace("bytes_per_user", "x_vector")] = round(
                    r[key] / raw["vector_bytes"], 2)
                r[key.replace("bytes_per_user", "x_vector_history")] = round(
                    r[key] / (raw["vector_bytes"] + raw["bounded_history_bytes"]), 2)


def table(results: list[dict[str, Any]]) -> str:
    rows = ["| backend | users | items | fill s (users/s) | checkpoint full / written MB | "
            "duration s | B/user ckpt | B/item ckpt | B/user heap | x vector / x (vector + "
            "history) | JVM RSS MiB (peak) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['backend']} | {r['users']:,} | {r['items']:,} | failed: "
                        f"{r['error'].splitlines()[0][:70]} |||||||")
            continue
        c = r["checkpoint"]
        heap = r.get("bytes_per_user_heap")
        rows.append(
            f"| {r['backend']} | {r['users']:,} | {r['items']:,} | {r['fill_s']:,.0f} "
            f"({r['users_per_s']:,.0f}) | {c['state_size'] / 1e6:,.1f} / "
            f"{c['checkpointed_size'] / 1e6:,.1f} | {c['duration_ms'] / 1000:.1f} | "
            f"{r['bytes_per_user_checkpoint']:,.0f} | {r['bytes_per_item_checkpoint']:,.0f} | "
            f"{'-' if heap is None else f'{heap:,.0f}'} | {r['x_vector_checkpoint']:.1f} / "
            f"{r['x_vector_history_checkpoint']:.2f} | "
            f"{r['rss_after_checkpoint_mib']:,.0f} ({r['rss_peak_mib']:,.0f}) |")
    return "\n".join(rows)


def verdicts(results: list[dict[str, Any]], raw: dict[str, Any]) -> list[str]:
    goal_u, goal_i = raw["goal_user_bytes"], raw["goal_item_bytes"]
    out = [f"goal per user: <= {GOAL_FACTOR} x (raw float32 vector {raw['vector_bytes']} B + "
           f"bounded history {raw['bounded_history_bytes']:.0f} B) = {goal_u:.0f} B; "
           f"bounded history = {raw['history_entries']:.0f} entries (model.history_len) as "
           "UserState stores them: UTF-8 item id + NUL separator + "
           f"{raw['history_columns'] / max(raw['history_entries'], 1):.0f} B of time, weight "
           "and type code",
           f"goal per item: <= {GOAL_FACTOR} x raw float32 vector = {goal_i:.0f} B"]
    for r in results:
        if "error" in r:
            continue
        head = f"{r['backend']} {r['users']:,} users:"
        parts = []
        for key, label in (("bytes_per_user_checkpoint", "checkpoint"),
                           ("bytes_per_user_heap", "heap"),
                           ("bytes_per_user_heap_slope", "heap slope"),
                           ("bytes_per_user_rocksdb_local", "RocksDB local")):
            v = r.get(key)
            if v:
                parts.append(f"{label} {v:,.0f} B/user = {v / goal_u * GOAL_FACTOR:.2f}x "
                             f"({'met' if v <= goal_u else 'NOT met'})")
        vi = r["bytes_per_item_checkpoint"]
        parts.append(f"checkpoint {vi:,.0f} B/item = {vi / raw['vector_bytes']:.2f}x vector "
                     f"({'met' if vi <= goal_i else 'NOT met'})")
        out.append(head + " " + "; ".join(parts))
    return out


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in doc["results"] if "error" not in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    style = {"hashmap": ("tab:blue", "o"), "rocksdb": ("tab:orange", "s"),
             "rocksdb-incremental": ("tab:green", "^")}
    for backend in BACKENDS:
        rs = sorted((r for r in results if r["backend"] == backend), key=lambda r: r["users"])
        if not rs:
            continue
        color, marker = style[backend]
        xs = [r["users"] for r in rs]
        ax1.plot(xs, [r["checkpoint"]["state_size"] / 1e6 for r in rs], marker=marker,
                 color=color, label=f"{backend} (full size)")
        if backend == "rocksdb-incremental":
            ax1.plot(xs, [r["checkpoint"]["checkpointed_size"] / 1e6 for r in rs],
                     marker=marker, color=color, linestyle="--",
                     label=f"{backend} (written by this checkpoint)")
        ax2.plot(xs, [r["checkpoint"]["duration_ms"] / 1000 for r in rs], marker=marker,
                 color=color, label=backend)
    items = results[0]["items"] if results else 0
    for ax, ylabel in ((ax1, "checkpoint size (MB)"), (ax2, "checkpoint duration (s)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"users in state (+ {items:,} items)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    raw = doc["raw"]
    fig.suptitle(f"freshrec keyed state, first checkpoint after the fill (dim {doc['dim']}, "
                 f"{raw['history_entries']:.0f} history, {doc['dedup_ids']} dedup ids; "
                 f"p=1, thread mode)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ============================================================================ main

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_fill-job":
        return fill_main(argv[1:])
    if argv and argv[0] == "_plot":
        plot(json.loads(Path(argv[1]).read_text()), Path(argv[2]))
        return 0
    from bench.common import machine
    from devstack.kafka_broker import broker_down, broker_up
    from devstack.kafka_topics import create_topic
    from devstack.processes import free_ports
    from freshrec_common import kafka_config
    from freshrec_common.settings import load_settings

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", help="reuse this broker (PLAINTEXT) instead of starting one")
    ap.add_argument("--users", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument("--dim", type=int, help="model.dim (default: the settings', 32)")
    ap.add_argument("--dedup-ids", type=int, default=20,
                    help="recent event ids per user (in RefreshState.recent_ids)")
    ap.add_argument("--event-id-chars", type=int, default=36,
                    help="length of each event id (36 = UUID text)")
    ap.add_argument("--events-per-user", type=int,
                    help="events each template user learns (default: model.history_len)")
    ap.add_argument("--heap", default="", help="JVM -Xmx of the fill job (default: JVM's)")
    ap.add_argument("--fill-timeout", type=float, default=3600.0)
    ap.add_argument("--checkpoint-timeout", type=float, default=900.0)
    ap.add_argument("--no-gc", action="store_true", help="skip jcmd GC.run / heap_info")
    ap.add_argument("--set", dest="extra_sets", action="append", default=[],
                    help="extra section.key=value for the fill job")
    ap.add_argument("--json", default=str(RESULTS_DIR / "state.json"))
    ap.add_argument("--plot", default=str(REPO_ROOT / "docs" / "img" / "state_scale.png"))
    ap.add_argument("--quick", action="store_true", help="smoke run: 20k users, 5k items")
    ap.add_argument("--keep", action="store_true", help="keep checkpoints and logs")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    if args.quick:
        args.users, args.items = [20_000], 5_000

    cache_dir = os.environ.get("FRESHREC_LOCAL_CACHE_DIR", str(REPO_ROOT / ".cache"))
    work = Path(tempfile.mkdtemp(prefix="freshrec-bench-state-"))
    info = machine()
    say(f"machine: {info['cpus']} CPUs ({info['cpu']}), {info['memory']}, load "
        f"{' '.join(f'{x:.2f}' for x in info['loadavg_at_start'])}; work dir {work}")
    sets = [f"local.cache_dir={cache_dir}", *args.extra_sets]
    if args.dim:
        sets.append(f"model.dim={args.dim}")
    started = None
    if args.bootstrap:
        boot = [f"kafka.bootstrap_servers={args.bootstrap}",
                "kafka.security_protocol=PLAINTEXT", "kafka.sasl_mechanism="]
    else:
        port, cport = free_ports(2)
        boot = [f"kafka.bootstrap_servers=127.0.0.1:{port}", "kafka.security_protocol=PLAINTEXT",
                "kafka.sasl_mechanism=", "kafka.client_id=freshrec-bench"]
        started = load_settings(overrides=[
            f"local.port={port}", f"local.controller_port={cport}", "local.host=127.0.0.1",
            f"local.state_dir={work / 'kafka'}", f"local.cache_dir={cache_dir}", *boot])
        say(f"starting a Kafka broker on 127.0.0.1:{port}")
        broker_up(started, log=say)
    base_sets = [*boot, *sets]
    settings = load_settings(overrides=base_sets)
    config = settings.model
    args.events_per_user = args.events_per_user or config.history_len
    spec = FillSpec(args.items, args.dedup_ids, args.events_per_user, args.event_id_chars)
    raw = raw_sizes(config, spec, settings.job.dedup_window_s)
    say(f"raw (Python): UserState {raw['user_state_bytes']:.0f} B (vector "
        f"{raw['vector_bytes']}, bounded history {raw['bounded_history_bytes']:.0f}, seen ids "
        f"{raw['seen_ids']:.0f}), pickled value {raw['pickled_value_bytes']:.0f} B (recent "
        f"event ids {raw['recent_ids_bytes']:.0f}); ItemState {raw['item_state_bytes']:.0f} B")
    kwargs = kafka_config.client_kwargs(settings)
    kwargs["client_id"] = "freshrec-bench-state"
    results: list[dict[str, Any]] = []
    t_run = time.monotonic()
    try:
        run_id = uuid.uuid4().hex[:6]
        items_topic = f"bench-state-{run_id}.items"
        create_topic(settings, items_topic, partitions=1)
        preload(kwargs, items_topic, args.items)
        for n in args.users:
            users_topic = f"bench-state-{run_id}.users-{n}"
            create_topic(settings, users_topic, partitions=1)
            preload(kwargs, users_topic, n)
            for backend in args.backends:
                say(f"=== {backend}: {n:,} users, {args.items:,} items")
                run = FillRun(RunPlan(backend, n, args.items, users_topic, items_topic), args,
                              base_sets, work)
                try:
                    res = run.go()
                except Exception as exc:  # report it, measure the rest
                    say(f"{run.tag} FAILED: {exc}")
                    res = {"backend": backend, "users": n, "items": args.items,
                           "error": str(exc)[:2000], "log": str(run.log_path)}
                finally:
                    run.stop()
                if "error" not in res and not args.keep:
                    shutil.rmtree(run.dir, ignore_errors=True)  # GBs of checkpoints at 1M
                results.append(res)
    finally:
        if started is not None:
            broker_down(started, log=say)
        if not args.keep and not any("error" in r for r in results):
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"kept {work} (logs of the failed runs)")
    derive(results, raw)
    doc = {"machine": info, "command": " ".join([".venv/bin/python", "-m", "bench.bench_state",
                                                   *argv]),
           "dim": config.dim, "history_len": config.history_len, "dedup_ids": args.dedup_ids,
           "event_id_chars": args.event_id_chars, "events_per_user": args.events_per_user,
           "checkpoint_interval_ms": settings.job.checkpoint_interval_ms,
           "heap": args.heap or "JVM default", "raw": raw, "results": results,
           "verdicts": verdicts(results, raw), "total_s": round(time.monotonic() - t_run, 1)}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n", "utf-8")
    if args.plot and any("error" not in r for r in results):
        plot(doc, Path(args.plot))
    print()
    print(table(results))
    print()
    for line in doc["verdicts"]:
        print(line)
    print(f"\nraw: {json.dumps(raw)}")
    print(f"total {doc['total_s']:.0f}s; JSON: {path}; plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
