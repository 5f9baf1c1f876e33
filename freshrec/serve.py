"""``freshrec serve``: each user's latest list and similar items over HTTP.

Examples::

    freshrec serve                      # http://127.0.0.1:8000, store in .freshrec/serve
    curl -s localhost:8000/v1/users/u42/recommendations?k=5
    curl -s localhost:8000/v1/items/i7/similar?k=5

A consumer thread (:mod:`freshrec.serve_feed`) reads ``topics.recommendations`` and
``topics.item_embeddings`` into the LMDB store of :mod:`freshrec.serve_store`, committing
each batch with the offsets after it; a restart resumes at the stored offsets. The HTTP side
(:mod:`freshrec.serve_http`, aiohttp on the asyncio loop of the main thread) answers lists
from the store, and similar items from an in-memory item replica on a worker thread. Routes
and their answers: ``docs/serving.md``.

SIGTERM, SIGINT or SIGHUP: the server stops accepting, the consumer finishes its batch and
closes, the store is flushed, and the command exits 128 + the signal's number, as every
command does.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

from aiohttp import web

from freshrec.serve_feed import Materializer, ServeError
from freshrec.serve_http import Service, is_loopback
from freshrec.serve_metrics import ServeMetrics
from freshrec.serve_store import Store, StoreError
from freshrec.signals import STOP_SIGNALS, exit_code
from freshrec_common import kafka_config
from freshrec_common.privacy import PseudonymKeyError, load_key
from freshrec_common.settings import Settings, SettingsError, load_settings


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
