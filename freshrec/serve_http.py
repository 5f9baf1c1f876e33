"""The HTTP side of ``freshrec serve`` (aiohttp): lists from the store, similar items from an
in-memory item replica with the model core's own retrieval
(:func:`online_models.scoring.similar_items`) on a worker thread, so that a long scan never
holds up list requests; a lock keeps the consumer's updates and those queries apart. Routes
and their answers: ``docs/serving.md``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from freshrec.serve_feed import Materializer
from freshrec.serve_metrics import ServeMetrics
from freshrec.serve_store import Store
from freshrec_common.privacy import pseudonymize
from freshrec_common.settings import Settings
from online_models.learning import apply_item_embedding
from online_models.replica import ItemReplica
from online_models.scoring import similar_items
from schemas.event_fields import DecodeError, check_id
from schemas.item_embedding import ItemEmbedding
from schemas.recommendation import Recommendation

log = logging.getLogger("freshrec.serve")

MAX_K = 100
DEFAULT_K = 10
USERS_ROUTE = "/v1/users/{user_id}/recommendations"
SIMILAR_ROUTE = "/v1/items/{item_id}/similar"
_PUBLIC = frozenset({"/healthz"})  # no token needed (load balancers probe it)


class BadRequest(ValueError):
    """A request the service refuses with 400; the message says what is wrong."""


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
    freshrec.serve_http.BadRequest: k must be an integer from 1 to 100, got '0'
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
    freshrec.serve_http.BadRequest: user_id contains control characters
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
