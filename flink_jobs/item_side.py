"""What item-update does with a bundle of item messages, as plain Python (no Flink import).

item-update is keyed by item shard. A bundle holds the messages user-update sent to the
shard (summed gradients of a user bundle, or an ``item_upsert`` event's bytes).
:meth:`ItemSide.process` applies the upserts, then each gradient message as one step, to
the items' states (read once per item, written with one ``put_all``) and marks the items
due for publishing; :meth:`ItemSide.publish` builds their changelog records when the
shard's timer fires. An item is published at most once per ``publish_interval_ms`` after an
interaction or upsert, and once per ``background_interval_ms`` after only being nudged as a
sampled negative or as context. The background interval is cut into slots
(:func:`background_slot`), each item in its own by a hash of its id, so that a shard's
nudged items go out spread over the interval rather than in one burst at its end: the
operator keeps the list of items waiting for the next foreground tick, the items waiting
in each slot, and a timer at each of those times.

>>> side = ItemSide(ModelConfig(dim=4), 200, 5000)
>>> raw = (b'{"event_id":"u1","event_type":"item_upsert","ts":1700000000000,'
...        b'"item_id":"i1","category":"c"}')
>>> res = side.process([UPSERT_MESSAGE + raw], lambda ids: {}, lambda ev: False, now=1_000)
>>> sorted(res.writes), res.soon, res.soon_at
(['i1'], ['i1'], 1200)
>>> out, n = side.publish(["i1"], res.writes)
>>> n, ItemState.from_bytes(res.writes["i1"]).category
(1, 'c')
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from flink_jobs.bundles import (
    COVISIT_MESSAGE,
    GRADIENT_MESSAGE,
    ITEM_EMBEDDINGS,
    UPSERT_MESSAGE,
    OutputBundle,
)
from flink_jobs.user_side_types import Loader
from online_models.config import ModelConfig
from online_models.covisit import CoVisits, add_pair, strongest_first
from online_models.item_gradients import ItemGradients, apply_gradients_to_rows
from online_models.item_state import ItemRows, ItemState
from online_models.learning import new_item_state
from online_models.replica import LN2, NEW_ITEM_TREND
from online_models.text import ColdText, TextMap, item_text, load_text_encoder, warm_milestone
from schemas.event_fields import DecodeError
from schemas.events import Event, decode_event
from schemas.item_embedding import ItemEmbedding

_DUE_MAGIC = b"FD1"
# Slots per background interval (fewer when the foreground interval is coarser): small
# enough that a bundle touches few of them, enough that each slot's burst is small.
BACKGROUND_SLOTS = 20


def background_slot(item_id: str, now: int, fore: int, back: int) -> int:
    """When an item only nudged at ``now`` is published: its slot's next time after
    ``now`` (within ``back`` ms). Slots are whole multiples of ``fore`` ms apart and an
    item's slot is fixed by its id, so nudges within an interval publish it once.

    >>> [background_slot(i, 1_000, 500, 30_000) for i in ("i1", "i2", "i3")]
    [21000, 10500, 16500]
    >>> background_slot("i1", 20_999, 500, 30_000), background_slot("i1", 21_000, 500, 30_000)
    (21000, 51000)
    """
    width = fore * max(1, back // fore // BACKGROUND_SLOTS)
    slots = max(1, back // width)
    # crc32's high bits: its low bits pick the item's shard (flink_jobs.shard_keys).
    at = now - now % back + ((zlib.crc32(item_id.encode("utf-8")) >> 8) % slots) * width
    return at if at > now else at + back


def pack_ids(ids: Iterable[str]) -> bytes:
    """Ids as one value (ids never hold NUL, see ``schemas.event_fields``).

    >>> unpack_ids(pack_ids(["a", "b"])), unpack_ids(pack_ids([]))
    (['a', 'b'], [])
    """
    return "\x00".join(ids).encode("utf-8")


def unpack_ids(blob: bytes | None) -> list[str]:
    """Inverse of :func:`pack_ids` (``None``: none)."""
    return blob.decode("utf-8").split("\x00") if blob else []


def pack_due(due: Mapping[str, int]) -> bytes:
    """Keys and their due times, e.g. a shard's owed refreshes (layout ``FD1``).

    >>> unpack_due(pack_due({"a": 5, "b": 7}))
    {'a': 5, 'b': 7}
    """
    n = len(due)
    return (_DUE_MAGIC + struct.pack(f"<I{n}q", n, *due.values())
            + "\x00".join(due).encode("utf-8"))


def unpack_due(blob: bytes | None) -> dict[str, int]:
    """Inverse of :func:`pack_due` (``None``: nothing waiting)."""
    if not blob:
        return {}
    if blob[:3] != _DUE_MAGIC:
        raise ValueError("not a freshrec due schedule (bad magic)")
    (n,) = struct.unpack_from("<I", blob, 3)
    times = struct.unpack_from(f"<{n}q", blob, 7)
    ids = blob[7 + 8 * n:].decode("utf-8").split("\x00") if n else []
    return dict(zip(ids, times, strict=True))


@dataclass
class ItemBundleResult:
    """Item state writes; items to publish at the next tick of ``publish_interval_ms``
    (``soon``, at ``soon_at``) and items only nudged, by the time of their background slot
    (``later``); upsert ids to remember and duplicates dropped."""

    writes: dict[str, bytes]
    soon: list[str]
    soon_at: int
    later: dict[int, list[str]]
    upsert_ids: list[str]
    duplicates: int
    text_map: bytes | None = None  # the shard's text map after the bundle, if it learned


class ItemSide:
    """The item side of the job (stateless: all state comes in and goes out as bytes)."""

    def __init__(self, config: ModelConfig, publish_interval_ms: int,
                 background_interval_ms: int) -> None:
        self.config = config
        self.publish_interval_ms = publish_interval_ms
        self.background_interval_ms = background_interval_ms
        self._decay_per_ms = LN2 / (config.trend_half_life_s * 1000.0)
        # Cold items from their text: only here, on the item side (None: off).
        self.text_encoder = load_text_encoder(config.text_encoder)

    def process(self, messages: list[bytes], load: Loader,
                seen_upsert: Callable[[str], bool], now: int,
                text_map: bytes | None = None) -> ItemBundleResult:
        """Apply the bundle's upserts, then each gradient message in arrival order;
        ``seen_upsert(event_id)`` tells a re-sent upsert. ``text_map`` is the shard's
        :class:`~online_models.text.TextMap` bytes: new items with words start from it,
        and items reaching a warm milestone teach it (returned when it learned)."""
        gradients: list[ItemGradients] = []
        pairs = CoVisits()
        upserts: list[Event] = []
        upsert_ids: list[str] = []
        duplicates = 0
        for msg in messages:
            kind, body = msg[:1], msg[1:]
            if kind == GRADIENT_MESSAGE:
                gradients.append(ItemGradients.from_bytes(body))
            elif kind == COVISIT_MESSAGE:
                pairs.extend(CoVisits.from_bytes(body))
            elif kind == UPSERT_MESSAGE:
                # Validated by user-update already, against the job's limits.
                event = decode_event(body, len(body), len(body))
                if isinstance(event, DecodeError):
                    raise ValueError(f"item upsert that does not decode: {event.message}")
                if seen_upsert(event.event_id) or event.event_id in upsert_ids:
                    duplicates += 1
                    continue
                upsert_ids.append(event.event_id)
                upserts.append(event)
            else:
                raise ValueError(f"unknown item message kind {kind!r}")
        new_meta: dict[str, Mapping[str, Any] | None] = {}
        for g in gradients:
            for i, m in zip(g.item_ids, g.meta, strict=True):
                new_meta.setdefault(i, m)
        for a in pairs.a:
            new_meta.setdefault(a, None)
        ids = list(dict.fromkeys(
            [*(e.item_id for e in upserts if e.item_id is not None), *new_meta]))
        stored = load(ids)
        writes: dict[str, bytes] = {}
        soon: dict[str, None] = {}
        cold = None if self.text_encoder is None else ColdText(
            self.text_encoder, self.config.dim, self.config.text_map_min,
            TextMap.from_bytes(text_map) if text_map else None)
        learned_before = 0 if cold is None else cold.map.n
        new_texts: dict[str, str] = {}  # words of the items this bundle creates
        for m in upserts:
            item_id = m.item_id
            assert item_id is not None
            meta = {"category": m.category, "brand": m.brand, "price": m.price,
                    "title": m.title, "available": m.available}
            blob = writes.get(item_id) or stored.get(item_id)
            if blob is None:
                new_texts[item_id] = item_text(m.title, m.description, m.category, m.brand,
                                               m.context)
            item = (ItemState.from_bytes(blob) if blob is not None
                    else new_item_state(item_id, self.config, meta))
            writes[item_id] = item.replace(
                **{k: v for k, v in meta.items() if v is not None},
                last_ts=max(item.last_ts, m.ts_ms)).to_bytes()
            soon[item_id] = None
        later: dict[str, None] = {}
        rows = None
        if new_meta:
            for i, m in new_meta.items():
                if i not in writes and stored.get(i) is None:
                    new_texts[i] = item_text(category=(m or {}).get("category"),
                                             brand=(m or {}).get("brand"))
            rows = ItemRows([
                writes.get(i) or stored.get(i) or new_item_state(i, self.config, m).to_bytes()
                for i, m in new_meta.items()])
        if cold is not None and new_texts:
            self._place_new(cold, new_texts, writes, rows)
        if rows is not None:
            before = rows.n_events.copy()
            # One Adagrad step per message (a user bundle's sums), in arrival order: with
            # one step per item bundle the items learned too little from bursts of events.
            for g in gradients:
                apply_gradients_to_rows(rows, g, self.config)
                for item_id, tw in zip(g.item_ids, g.trend_weight.tolist(), strict=True):
                    (soon if tw > 0 else later)[item_id] = None
            self._add_pairs(rows, pairs, later)
            if cold is not None:
                self._teach(cold, rows, before)
            writes.update(rows.blobs())
        fore, back = self.publish_interval_ms, self.background_interval_ms
        slots: dict[int, list[str]] = {}
        for i in later:
            if i not in soon:
                slots.setdefault(background_slot(i, now, fore, back), []).append(i)
        return ItemBundleResult(writes, list(soon), (now // fore + 1) * fore, slots,
                                upsert_ids, duplicates,
                                None if cold is None or cold.map.n == learned_before
                                else cold.map.to_bytes())

    @staticmethod
    def _place_new(cold: ColdText, texts: dict[str, str], writes: dict[str, bytes],
                   rows: ItemRows | None) -> None:
        """Start the bundle's new items with words at ``content + map(text)`` (replicas
        keep that vector while the item's category has no learned items)."""
        ids = list(texts)
        content = np.stack([
            rows.vectors[rows.index[i]] if rows is not None and i in rows.index
            else ItemState.from_bytes(writes[i]).vector for i in ids])
        for item_id, vector in zip(ids, cold.start_vectors(list(texts.values()), content),
                                   strict=True):
            if vector is None:
                continue
            if rows is not None and item_id in rows.index:
                rows.vectors[rows.index[item_id]] = vector
            if item_id in writes:
                item = ItemState.from_bytes(writes[item_id])
                writes[item_id] = item.replace(vector=vector.astype(np.float32)).to_bytes()

    @staticmethod
    def _teach(cold: ColdText, rows: ItemRows, before: np.ndarray) -> None:
        """Teach the text map the vectors of items that reached a warm milestone."""
        warm = [j for j, (a, b) in enumerate(zip(before.tolist(), rows.n_events.tolist(),
                                                  strict=True)) if warm_milestone(a, b)]
        if not warm:
            return
        states = [rows.state(j) for j in warm]
        cold.learn([item_text(s.title, None, s.category, s.brand) for s in states],
                   rows.vectors[warm])

    def _add_pairs(self, rows: ItemRows, pairs: CoVisits, changed: dict[str, None]) -> None:
        """Co-visitation pairs into their first item's bounded neighbours."""
        cap = self.config.covisit_neighbours
        table: dict[str, dict[str, float]] = {}
        for a, b, w in zip(pairs.a, pairs.b, pairs.w, strict=True):
            nb = table.get(a)
            if nb is None:
                nb = rows.neighbours(rows.index[a])
            table[a] = add_pair(nb, b, w, cap)
        for a, nb in table.items():
            # Kept as CoVisitTable keeps them (the replay's): up to twice the cap.
            rows.set_neighbours(rows.index[a], nb)
            changed[a] = None

    def publish(self, item_ids: list[str], stored: Mapping[str, bytes | None]
                ) -> tuple[OutputBundle, int]:
        """Changelog records of these items (one per item); returns them and their count."""
        out = OutputBundle()
        n = 0
        for item_id in item_ids:
            blob = stored.get(item_id)
            if blob is None:
                continue
            item = ItemState.from_bytes(blob)
            # ItemState.trend is forward-decayed from the epoch; publish it as of last_ts. An
            # item without interactions gets the new-listing trend, as the replica does.
            trend = (item.trend - item.last_ts * self._decay_per_ms
                     if math.isfinite(item.trend) else math.log(NEW_ITEM_TREND))
            emb = ItemEmbedding(
                item_id=item.item_id, vector=tuple(item.vector.tolist()),
                bias=item.bias, trend=trend, n_events=item.n_events, updated_at=item.last_ts,
                acc=item.acc, category=item.category, brand=item.brand, title=item.title,
                price=item.price, available=item.available,
                neighbours=strongest_first(item.neighbours))
            out.keyed(ITEM_EMBEDDINGS, item.item_id.encode("utf-8"), emb.to_bytes())
            n += 1
        return out, n
