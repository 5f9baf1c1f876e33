"""What the bundle-side tests share: settings, records, a dict standing in for MapState, a
published item."""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from flink_jobs.bundles import RawRecord
from flink_jobs.user_side import UserSide
from flink_jobs.user_side_types import UserSideSettings
from online_models.config import ModelConfig
from schemas.item_embedding import ItemEmbedding

T0 = 1_700_000_000_000
CFG = ModelConfig(dim=8, seed=1, exploration=0.0, top_k=5)


def settings(**changes: object) -> UserSideSettings:
    base = dict(config=CFG, model_version="test", events_topic="events",
                refresh_interval_ms=200, dedup_window_s=3600, dedup_max_ids=64,
                max_payload_bytes=65536, max_id_length=128, item_shards=4)
    base.update(changes)
    return UserSideSettings(**base)  # type: ignore[arg-type]


def record(doc: dict | bytes | None, offset: int = 0, key: bytes | None = None) -> RawRecord:
    value = doc if doc is None or isinstance(doc, bytes) else json.dumps(doc).encode()
    return RawRecord(0, offset, T0, key, value)


def event(n: int, user: str, item: str, etype: str = "view", **extra: object) -> RawRecord:
    return record({"event_id": f"e{n}", "event_type": etype, "ts": T0 + n, "user_id": user,
                   "item_id": item, **extra}, offset=n, key=user.encode())


class Store:
    """A dict standing in for the operators' MapState."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    def load(self, users: Mapping[str, int]) -> dict[str, bytes | None]:
        return {i: self.values.get(i) for i in users}

    def apply(self, writes: dict[str, bytes], removes: list[str] = ()) -> None:  # type: ignore[assignment]
        self.values.update(writes)
        for r in removes:
            self.values.pop(r, None)


def catalogue(side: UserSide, n: int = 30) -> None:
    for i in range(n):
        side.replica.upsert(f"i{i}", meta={"category": f"c{i % 3}"}, ts_ms=T0)


def published(n_neighbours: int, **fields: object) -> ItemEmbedding:
    """An item as the changelog carries it: a float32 vector, neighbours strongest first."""
    rng = np.random.default_rng(n_neighbours)
    vector = tuple(rng.normal(0, 0.1, 64).astype(np.float32).tolist())
    neighbours = tuple((f"item-{k}", float(rng.random() * 10)) for k in range(n_neighbours))
    base = dict(item_id="item-x", vector=vector, bias=0.123456789, trend=-3.25, n_events=17,
                updated_at=1_764_000_000_123, acc=0.5, category="electronics.audio",
                brand="acme", title="Kopfhörer — schnurlos", price=19.99, available=True,
                neighbours=neighbours)
    base.update(fields)
    return ItemEmbedding(**base)  # type: ignore[arg-type]
