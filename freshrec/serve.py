"""``freshrec serve``: each user's latest list and similar items over HTTP.

Examples::

    freshrec serve                      # http://127.0.0.1:8000, store in .freshrec/serve
    curl -s localhost:8000/v1/users/u42/recommendations?k=5
    curl -s localhost:8000/v1/items/i7/similar?k=5

A consumer thread reads ``topics.recommendations`` (read_committed, every partition, no
consumer group) and ``topics.item_embeddings`` into the LMDB store of
:mod:`freshrec.serve_store`, committing each batch with the offsets after it; a restart
resumes at the stored offsets. The HTTP side (aiohttp, on the asyncio loop of the main
thread) answers lists from the store, and similar items from an in-memory item replica
with the model core's own retrieval (:func:`online_models.scoring.similar_items`) on a worker
thread, so that a long scan never holds up list requests; a lock keeps the consumer's
updates and those queries apart. Routes and their answers: ``docs/serving.md``.

SIGTERM, SIGINT or SIGHUP: the server stops accepting, the consumer finishes its batch and
closes, the store is flushed, and the command exits 128 + the signal's number, as every
command does.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hmac
import ipaddress
import logging
import signal
import struct
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from freshrec import kafka_config
from freshrec.metrics import SERVE_LATENCY_BUCKETS_S, SERVE_METRICS, STALENESS_BUCKETS_S
from freshrec.polling import wait_until
from freshrec.privacy import PseudonymKeyError, load_key, pseudonymize
from freshrec.processes import STOP_SIGNALS, exit_code
from freshrec.serve_store import Change, Store, StoreError, pack_list
from freshrec.settings import Settings, SettingsError, load_settings
from online_models.learning import apply_item_embedding
from online_models.replica import ItemReplica
from online_models.scoring import similar_items
from schemas.events import DecodeError, check_id
from schemas.item_embedding import ItemEmbedding
from schemas.recommendation import Recommendation

log = logging.getLogger("freshrec.serve")

MAX_K = 100
DEFAULT_K = 10
USERS_ROUTE = "/v1/users/{user_id}/recommendations"
SIMILAR_ROUTE = "/v1/items/{item_id}/similar"
_PUBLIC = frozenset({"/healthz"})  # no token needed (load balancers probe it)
_POLL_MS = 100  # longest the consumer waits for records before it checks for a stop
_TOPIC_WAIT_S = 30.0


class ServeError(RuntimeError):
    """The service cannot start with these settings; the message names the setting."""


class BadRequest(ValueError):
    """A request the service refuses with 400; the message says what is wrong."""


# ---------------------------------------------------------------------------- metrics


class ServeMetrics:
    """The ``freshrec_serve_*`` metrics of :data:`freshrec.metrics.SERVE_METRICS`."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        spec = SERVE_METRICS

        def counter(name: str) -> Any:  # prometheus-client appends _total itself
            return Counter(name.removesuffix("_total"), spec[name].help, spec[name].labels,
                           registry=self.registry)

        self.requests = counter("freshrec_serve_requests_total")
        self.records_read = counter("freshrec_serve_records_read_total")
        self.records_skipped = counter("freshrec_serve_records_skipped_total")
        s = spec["freshrec_serve_request_latency_seconds"]
        self.latency = Histogram(s.name, s.help, s.labels, registry=self.registry,
                                 buckets=SERVE_LATENCY_BUCKETS_S)
        s = spec["freshrec_serve_list_staleness_seconds"]
        self.staleness = Histogram(s.name, s.help, registry=self.registry,
                                   buckets=STALENESS_BUCKETS_S)
        s = spec["freshrec_serve_consumer_lag_records"]
        self.lag = Gauge(s.name, s.help, s.labels, registry=self.registry)
        s = spec["freshrec_serve_ready"]
        self.ready = Gauge(s.name, s.help, registry=self.registry)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# --------------------------------------------------------------------------- consumer


class Materializer(threading.Thread):
    """Reads both topics into the store, and item records into the replica.

    ``on_items`` is called (from this thread) with the item-embedding records of each
    batch, first with those already stored (``items_loaded`` is set after them); ``None``
    for an item id means a tombstone.
    """

    def __init__(self, settings: Settings, store: Store, metrics: ServeMetrics,
                 on_items: Callable[[list[tuple[str, ItemEmbedding | None]]], None]) -> None:
        super().__init__(name="freshrec-serve-consumer", daemon=True)
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.on_items = on_items
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.items_loaded = threading.Event()
        self.error: BaseException | None = None
        self.lag: dict[str, int] = {}
        self.records_read = 0

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        try:
            self._load_stored_items()
            self._consume()
        except BaseException as exc:  # reported by the main thread, which then exits
            self.error = exc

    def _load_stored_items(self) -> None:
        import torch  # noqa: F401  (the replica scores with it: imported here, off the loop)

        batch: list[tuple[str, ItemEmbedding | None]] = []
        for value in self.store.items():
            emb = ItemEmbedding.from_bytes(value)  # checked when it was stored
            batch.append((emb.item_id, emb))
            if len(batch) == 10_000:
                self.on_items(batch)
                batch = []
        self.on_items(batch)
        # Start-up is over (torch imported, stored items loaded): move what exists now out of
        # the collector's sight, so that full collections, which would scan torch's and the
        # replica's objects, stop stalling requests.
        gc.freeze()
        self.items_loaded.set()

    def _partitions(self, consumer: Any) -> list[Any]:
        from kafka import TopicPartition

        out = []
        for topic in (self.store.recs_topic, self.store.items_topic):
            out.extend(TopicPartition(topic, p)
                       for p in sorted(self._topic_partitions(consumer, topic)))
        return out

    def _topic_partitions(self, consumer: Any, topic: str) -> set[int]:
        # True (not a set) when serve is stopping: it gives up at once.
        parts = wait_until(lambda: consumer.partitions_for_topic(topic) or self.stopping.is_set(),
                           _TOPIC_WAIT_S, interval_s=0.5)
        if not isinstance(parts, set):
            raise ServeError(
                f"topic {topic} does not exist on {self.settings.kafka.bootstrap_servers}"
                " (`freshrec kafka up` creates the local ones)")
        return parts

    def _consume(self) -> None:
        consumer = kafka_config.consumer(
            self.settings, client_id="freshrec-serve", group_id=None,
            enable_auto_commit=False, isolation_level="read_committed",
            auto_offset_reset="earliest",
            # kafka-python checks CRC32C in pure Python: 60% of this thread's time while
            # rebuilding (py-spy). The broker checked each batch when it was written, and a
            # damaged record fails its schema decoder here and is skipped.
            check_crcs=False)
        try:
            partitions = self._partitions(consumer)
            for topic in (self.store.recs_topic, self.store.items_topic):  # series from 0
                self.metrics.records_read.labels(topic=topic)
                self.metrics.records_skipped.labels(topic=topic)
            consumer.assign(partitions)
            stored = self.store.offsets()
            for tp in partitions:
                if (tp.topic, tp.partition) in stored:
                    consumer.seek(tp, stored[(tp.topic, tp.partition)])
                else:
                    consumer.seek_to_beginning(tp)
            # Ready once every partition reaches the end it had at start (for read_committed,
            # the last stable offset): the store then answers as the topics did then.
            ends = consumer.end_offsets(partitions)
            while not self.stopping.is_set():
                self._step(consumer, partitions, stored)
                if not self.ready.is_set() and all(
                        consumer.position(tp) >= ends[tp] for tp in partitions):
                    self.ready.set()
                    self.metrics.ready.set(1)
                    log.info("caught up with the topics (%d records read)", self.records_read)
        finally:
            consumer.close()

    def _step(self, consumer: Any, partitions: list[Any],
              stored: dict[tuple[str, int], int]) -> None:
        polled = consumer.poll(timeout_ms=_POLL_MS, max_records=5000)
        changes: list[Change] = []
        items: list[tuple[str, ItemEmbedding | None]] = []
        for tp, messages in polled.items():
            is_recs = tp.topic == self.store.recs_topic
            read = self.metrics.records_read.labels(topic=tp.topic)
            read.inc(len(messages))
            self.records_read += len(messages)
            for m in messages:
                change = self._decode(tp.topic, m.key, m.value, is_recs, items)
                if change is None:
                    self.metrics.records_skipped.labels(topic=tp.topic).inc()
                    log.warning("record %s/%s@%s skipped: no usable key, or not a valid v1 "
                                "record",
                                tp.topic, tp.partition, m.offset)
                else:
                    changes.append(change)
        # Positions move past transaction markers and aborted records too: store them even
        # when no record came, so a restart does not read those again.
        positions = {(tp.topic, tp.partition): consumer.position(tp) for tp in partitions}
        moved = {k: v for k, v in positions.items() if stored.get(k) != v}
        if changes or moved:
            self.store.commit(changes, moved)
            stored.update(moved)
        if items:
            self.on_items(items)
        lag: dict[str, int] = {}
        for tp in partitions:
            high = consumer.highwater(tp)
            if high is not None:
                lag[tp.topic] = lag.get(tp.topic, 0) + max(high - positions[(tp.topic,
                                                                             tp.partition)], 0)
        for topic, n in lag.items():
            self.metrics.lag.labels(topic=topic).set(n)
        self.lag = lag

    def _decode(self, topic: str, key: bytes | None, value: bytes | None, is_recs: bool,
                items: list[tuple[str, ItemEmbedding | None]]) -> Change | None:
        """The store's change for one record, or None to skip it (no usable key, or not a
        valid v1 record: whatever the topic holds must not stop the consumer)."""
        if not key or len(key) > self.store.max_key_bytes:
            return None
        if value is None:  # tombstone: the user was forgotten, or the item removed
            if not is_recs:
                items.append((key.decode("utf-8", "replace"), None))
            return Change(topic, key, None)
        try:
            if is_recs:
                rec = Recommendation.from_json(value)
                return Change(topic, key, pack_list(rec, value))
            emb = ItemEmbedding.from_bytes(value)
        except (ValueError, TypeError, AttributeError, struct.error):
            return None  # struct.error: seq or generated_at beyond the store's 64 bits
        items.append((emb.item_id, emb))
        return Change(topic, key, value)


# ------------------------------------------------------------------------------- HTTP


def _json(status: int, doc: Mapping[str, Any], headers: Mapping[str, str] | None = None
          ) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), headers=headers,
                        content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json(status, {"error": message, "status": status})


def parse_k(query: Mapping[str, str]) -> int:
    """``k`` of a query string: an integer in 1..100, 10 if absent.

    >>> parse_k({}), parse_k({"k": "25"})
    (10, 25)
    >>> parse_k({"k": "0"})
    Traceback (most recent call last):
    ...
    freshrec.serve.BadRequest: k must be an integer from 1 to 100, got '0'
    """
    raw = query.get("k")
    if raw is None:
        return DEFAULT_K
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 3 and 1 <= int(raw) <= MAX_K):
        raise BadRequest(f"k must be an integer from 1 to {MAX_K}, got {raw[:20]!r}")
    return int(raw)


def parse_id(value: str, name: str, max_length: int) -> str:
    """An id from the path, checked like the job checks ids (length, control characters).

    >>> parse_id("u\\x07", "user_id", 128)
    Traceback (most recent call last):
    ...
    freshrec.serve.BadRequest: user_id contains control characters
    """
    checked = check_id(value, name, max_length)
    if isinstance(checked, DecodeError):
        raise BadRequest(checked.message)
    return checked


def etag_matches(header: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (or is ``*``).

    >>> etag_matches('"3-10", "4-12"', '"4-12"'), etag_matches('W/"4-12"', '"4-12"')
    (True, True)
    >>> etag_matches(None, '"4-12"'), etag_matches('"4-1"', '"4-12"')
    (False, False)
    """
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the service on this machine.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Service:
    """The HTTP application over a store and an item replica."""

    def __init__(self, settings: Settings, store: Store, metrics: ServeMetrics,
                 pseudonym_key: bytes | None) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.pseudonym_key = pseudonym_key
        self.config = settings.model
        self.replica = ItemReplica(self.config)
        self.removed: set[str] = set()  # items tombstoned on the changelog
        self.replica_lock = threading.Lock()  # the consumer writes, similar-item queries read
        self.materializer: Materializer | None = None
        token = settings.serve.auth_token
        self.token = f"Bearer {token}".encode() if token else None
        self.max_id = settings.job.max_id_length

    # -- the item replica (the consumer thread writes, worker threads query) ---------------
    def apply_items(self, batch: list[tuple[str, ItemEmbedding | None]]) -> None:
        with self.replica_lock:
            for item_id, emb in batch:
                if emb is None:
                    self.removed.add(item_id)
                    if item_id in self.replica:  # never suggested again
                        self.replica.upsert(item_id, meta={"available": False})
                else:
                    self.removed.discard(item_id)
                    apply_item_embedding(self.replica, emb)

    def similar_to(self, item_id: str, k: int) -> list[tuple[str, float]] | None:
        with self.replica_lock:
            if item_id in self.removed:
                return None
            return similar_items(self.replica, item_id, k, self.config)

    # -- middleware -------------------------------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        start = time.perf_counter()
        info = request.match_info.route.resource
        route = info.canonical if info is not None else "other"
        try:
            if self.token is not None and route not in _PUBLIC and not hmac.compare_digest(
                    request.headers.get("Authorization", "").encode("utf-8", "replace"),
                    self.token):
                response: web.StreamResponse = _json(
                    401, {"error": "missing or wrong bearer token", "status": 401},
                    {"WWW-Authenticate": "Bearer"})
            else:
                response = await handler(request)
        except BadRequest as exc:
            response = _error(400, str(exc))
        except web.HTTPException as exc:  # aiohttp's own: 404 for unknown paths, 405, ...
            response = _error(exc.status, exc.reason)
        except Exception:  # a bug must cost one request, never the service
            log.exception("request %s failed", request.path_qs[:200])
            response = _error(500, "internal error")
        self.metrics.requests.labels(route=route, status=response.status).inc()
        self.metrics.latency.labels(route=route).observe(time.perf_counter() - start)
        return response

    # -- routes ---------------------------------------------------------------------------
    async def recommendations(self, request: web.Request) -> web.Response:
        user_id = parse_id(request.match_info["user_id"], "user_id", self.max_id)
        k = parse_k(request.query)
        key = (pseudonymize(self.pseudonym_key, user_id) if self.pseudonym_key is not None
               else user_id)
        stored = self.store.get_list(key)
        if stored is None:
            return _error(404, f"no recommendations for user {user_id!r}")
        etag = f'"{stored.seq}-{stored.generated_at}"'
        if etag_matches(request.headers.get("If-None-Match"), etag):
            return web.Response(status=304, headers={"ETag": etag})
        rec = Recommendation.from_json(stored.record())
        self.metrics.staleness.observe(max(time.time() - rec.generated_at / 1000.0, 0.0))
        return _json(200, {
            "user_id": user_id,
            "items": [{"item_id": it.item_id, "score": it.score, "reason": it.reason}
                      for it in rec.items[:k]],
            "seq": rec.seq, "model": rec.model_version, "produced_at": rec.generated_at,
            "cold_start": rec.cold_start,
        }, {"ETag": etag})

    async def similar(self, request: web.Request) -> web.Response:
        item_id = parse_id(request.match_info["item_id"], "item_id", self.max_id)
        k = parse_k(request.query)
        if self.materializer is None or not self.materializer.items_loaded.is_set():
            return _error(503, "item vectors are still loading from the store")
        found = await asyncio.to_thread(self.similar_to, item_id, k)
        if found is None:
            return _error(404, f"unknown item {item_id!r}")
        return _json(200, {"item_id": item_id,
                           "items": [{"item_id": i, "score": s} for i, s in found]})

    async def healthz(self, request: web.Request) -> web.Response:
        m = self.materializer
        ready = m is not None and m.ready.is_set()  # set after the stored items are loaded
        lag = dict(m.lag) if m is not None else {}
        return _json(200 if ready else 503, {"status": "ready" if ready else "catching up",
                                             "lag": lag})

    async def metrics_route(self, request: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return web.Response(body=self.metrics.exposition(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware])
        app.router.add_get(USERS_ROUTE, self.recommendations, allow_head=False)
        app.router.add_get(SIMILAR_ROUTE, self.similar, allow_head=False)
        app.router.add_get("/healthz", self.healthz, allow_head=False)
        app.router.add_get("/metrics", self.metrics_route, allow_head=False)
        return app


# -------------------------------------------------------------------------------- run


def check_settings(settings: Settings) -> bytes | None:
    """Refuse an unsafe binding; the pseudonymisation key when ids are pseudonymised."""
    s = settings.serve
    if not is_loopback(s.host) and not s.auth_token:
        raise ServeError(
            f"serve.host={s.host} exposes the service beyond this machine: set a token in "
            "FRESHREC_SERVE_AUTH_TOKEN (serve.auth_token), or bind 127.0.0.1")
    if not settings.privacy.pseudonymize_users:
        return None
    try:
        return load_key(settings.privacy.key_file)
    except PseudonymKeyError as exc:
        raise ServeError(str(exc)) from None


async def serve(settings: Settings, announce: Callable[[str], None] = print) -> int:
    """Run until SIGTERM, SIGINT or SIGHUP (exit 128 + its number) or a consumer failure
    (exit 1); see the module docs."""
    key = check_settings(settings)
    s = settings.serve
    store = Store(s.store_dir, int(s.store_max_gb * 2**30), settings.topics.recommendations,
                  settings.topics.item_embeddings)
    metrics = ServeMetrics()
    service = Service(settings, store, metrics, key)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[int] = []

    def on_signal(sig: int) -> None:
        received.append(sig)
        stop.set()

    for sig in STOP_SIGNALS:  # the same stop as every command's (docs/operations.md)
        loop.add_signal_handler(sig, on_signal, sig)
    materializer = Materializer(settings, store, metrics, service.apply_items)
    service.materializer = materializer
    runner = web.AppRunner(service.app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, s.host, s.port, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            raise ServeError(f"serve.port: cannot listen on {s.host}:{s.port}: "
                             f"{exc.strerror}") from None
        materializer.start()
        announce(f"freshrec serve: http://{s.host}:{s.port} ({len(store)} users in the store "
                 f"at {s.store_dir}; /healthz turns ready once caught up)")

        async def watch_consumer() -> None:
            while materializer.is_alive():
                await asyncio.sleep(0.2)
            stop.set()

        watcher = asyncio.create_task(watch_consumer())
        await stop.wait()
        watcher.cancel()
    finally:
        await runner.cleanup()
        materializer.stop()
        if materializer.is_alive():
            await asyncio.to_thread(materializer.join)
        store.close()
    if materializer.error is not None:
        raise materializer.error
    if received:
        print(f"freshrec serve: stopped by {signal.Signals(received[0]).name}",
              file=sys.stderr)
        return exit_code(received[0])
    return 0


def run(args: argparse.Namespace, settings: Settings) -> int:
    flags = [f"serve.{k}={v}" for k, v in (("host", args.host), ("port", args.port))
             if v is not None]
    try:  # --host/--port are --set serve.host/serve.port: validated the same way
        settings = load_settings(args.config, overrides=[*args.overrides, *flags])
    except SettingsError as exc:
        print(f"freshrec serve: bad setting: {exc}", file=sys.stderr)
        return 2
    # Before logging is set up: a missing broker is one line, not kafka-python's retries.
    kafka_config.check_reachable(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    try:
        return asyncio.run(serve(settings, lambda line: print(line, flush=True)))
    except (ServeError, StoreError) as exc:
        print(f"freshrec serve: {exc}", file=sys.stderr)
        return 2


def register(subparsers: Any) -> None:
    """Add ``freshrec serve``."""
    p = subparsers.add_parser(
        "serve", help="recommendations and similar items over HTTP (docs/serving.md)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", help="address to bind (default serve.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default serve.port, 8000)")
    p.set_defaults(func=run)
