"""Item-embedding v1: one item's learned vector and metadata on a compacted topic.

>>> rec = ItemEmbedding("i1", (0.5, -0.25), 0.1, None, 3, 1700000000000, 0.2, "shoes")
>>> ItemEmbedding.from_bytes(rec.to_bytes()) == rec
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from schemas.loader import load_schema

ITEM_EMBEDDING_SCHEMA: dict[str, Any] = load_schema("item_embedding.v1.json")
SCHEMA_VERSION = ITEM_EMBEDDING_SCHEMA["properties"]["schema_version"]["const"]


@dataclass(frozen=True, slots=True)
class ItemEmbedding:
    item_id: str
    vector: tuple[float, ...]
    bias: float
    trend: float | None
    n_events: int
    updated_at: int
    acc: float = 0.0
    category: str | None = None
    brand: str | None = None
    title: str | None = None
    price: float | None = None
    available: bool = True
    neighbours: tuple[tuple[str, float], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return self._document(list(self.vector), [list(n) for n in self.neighbours])

    def _document(self, vector: Any, neighbours: Any) -> dict[str, Any]:
        trend = self.trend if self.trend is not None and math.isfinite(self.trend) else None
        return {
            "schema_version": SCHEMA_VERSION, "item_id": self.item_id,
            "vector": vector, "acc": self.acc, "bias": self.bias, "trend": trend,
            "n_events": self.n_events, "updated_at": self.updated_at,
            "category": self.category, "brand": self.brand, "title": self.title,
            "price": self.price, "available": self.available, "neighbours": neighbours,
        }

    def to_bytes(self) -> bytes:
        # orjson: the changelog carries every published item (~1 us here against ~20 us for
        # the standard library on a 32-float vector); the same JSON text, except that a
        # non-finite number becomes null (the standard library wrote NaN, which is not JSON),
        # and such a record is refused by from_bytes. orjson writes tuples as arrays, so the
        # neighbours go as they are (copying 200 pairs into lists cost more than the dump).
        return orjson.dumps(self._document(self.vector, self.neighbours))

    @classmethod
    def from_bytes(cls, payload: bytes | str) -> ItemEmbedding:
        """Parse an item-embedding v1 record; raises ``ValueError`` naming the bad field."""
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"item-embedding v1: not JSON ({exc})") from None
        try:
            if doc["schema_version"] != SCHEMA_VERSION:
                raise ValueError(f"schema_version {doc['schema_version']!r} is not 1")
            return cls(
                item_id=str(doc["item_id"]), vector=tuple(map(float, doc["vector"])),
                bias=float(doc["bias"]),
                trend=None if doc["trend"] is None else float(doc["trend"]),
                n_events=int(doc["n_events"]), updated_at=int(doc["updated_at"]),
                acc=float(doc.get("acc", 0.0)), category=doc.get("category"),
                brand=doc.get("brand"), title=doc.get("title"), price=doc.get("price"),
                available=bool(doc["available"]),
                neighbours=tuple((str(i), float(w)) for i, w in doc.get("neighbours", ())),
            )
        except KeyError as exc:
            raise ValueError(f"item-embedding v1: missing field {exc.args[0]!r}") from None
        except TypeError as exc:  # e.g. null in the vector
            raise ValueError(f"item-embedding v1: a field has the wrong type ({exc})") from None
