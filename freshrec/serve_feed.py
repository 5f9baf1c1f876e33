"""The consumer of ``freshrec serve``: both compacted topics into the store.

A thread reads ``topics.recommendations`` (read_committed, every partition, no consumer
group) and ``topics.item_embeddings`` into the LMDB store of :mod:`freshrec.serve_store`,
committing each batch with the offsets after it; a restart resumes at the stored offsets.
"""

from __future__ import annotations

import gc
import logging
import struct
import threading
from collections.abc import Callable
from typing import Any

from freshrec.serve_metrics import ServeMetrics
from freshrec.serve_store import Change, Store, pack_list
from freshrec_common import kafka_config
from freshrec_common.polling import wait_until
from freshrec_common.settings import Settings
from schemas.item_embedding import ItemEmbedding
from schemas.recommendation import Recommendation

log = logging.getLogger("freshrec.serve")

_POLL_MS = 100  # longest the consumer waits for records before it checks for a stop
_TOPIC_WAIT_S = 30.0


class ServeError(RuntimeError):
    """The service cannot start with these settings; the message names the setting."""


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
