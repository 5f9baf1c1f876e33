"""Item-to-item co-visitation learned online: the items people touch together.

Each positive event pairs its item with the user's last ``covisit_window`` distinct positive
items, weighted ``1 / distance`` (the item just before counts most), in both directions
(Amazon's item-to-item CF; the co-visitation matrices of the OTTO session-recommendation
winners). :func:`covisit_pairs` computes a bundle's increments from the users' states, so
the owner of an item can sum them like gradients; :class:`CoVisitTable` keeps, per item,
its positive-event count and between ``covisit_neighbours`` and twice that many strongest
neighbours (pruned to the strongest ``covisit_neighbours`` whenever they pass twice that,
so a newcomer has room to earn its place). The job's item owner keeps exactly the same in
item state and publishes all of them, so the job's replicas and the replay score alike.

A user's co-visitation score of an item is the cosine-normalised pair weight
``w(h, i) / sqrt(n_h n_i)`` summed over the user's last ``window`` distinct items ``h``,
weighted linearly by recency as V-SKNN weights a session (the most recent 1, the
``window``-th ``1 / window``); the last item's share is also kept apart (what comes right
after it).

>>> t = CoVisitTable(max_neighbours=4)
>>> t.add(CoVisits(["a", "b", "a"], ["b", "a", "c"], [1.0, 1.0, 0.5], ["a", "b", "c"]))
>>> sorted(t.neighbours["a"].items())
[('b', 1.0), ('c', 0.5)]
>>> s = t.scores(["a"], window=5)
>>> round(s["b"][0], 3), s["b"][2]
(1.0, 'a')
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson

from online_models.state import UserState


@dataclass(slots=True)
class CoVisits:
    """Co-visitation increments of a bundle: pair ``a[j] -> b[j]`` gains ``w[j]``, and
    every item in ``positives`` (once per positive event) gains one occurrence."""

    a: list[str] = field(default_factory=list)
    b: list[str] = field(default_factory=list)
    w: list[float] = field(default_factory=list)
    positives: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.a)

    def extend(self, other: CoVisits) -> None:
        """Append another bundle's increments."""
        self.a += other.a
        self.b += other.b
        self.w += other.w
        self.positives += other.positives

    def take(self, rows: Sequence[int] | np.ndarray) -> CoVisits:
        """The pairs at ``rows`` (no positives: the items' owners count those from the
        gradients)."""
        a, b, w = self.a, self.b, self.w
        return CoVisits([a[j] for j in rows], [b[j] for j in rows], [w[j] for j in rows])

    def to_bytes(self) -> bytes:
        """``FC1`` + a JSON array ``[a, b, w]`` (the pairs; ids are arbitrary strings)."""
        return _MAGIC + orjson.dumps([self.a, self.b, self.w])

    @classmethod
    def from_bytes(cls, blob: bytes) -> CoVisits:
        if blob[:3] != _MAGIC:
            raise ValueError(f"not co-visitation pairs (magic {blob[:3]!r})")
        a, b, w = orjson.loads(blob[3:])
        return cls(a, b, [float(x) for x in w])


_MAGIC = b"FC1"


def add_pair(neighbours: dict[str, float], other: str, w: float, cap: int
             ) -> dict[str, float]:
    """``neighbours[other] += w``, pruned to the strongest ``cap`` once it holds twice as
    many (amortised); returns the dict to keep (a new one after pruning)."""
    neighbours[other] = neighbours.get(other, 0.0) + w
    if len(neighbours) > 2 * cap:
        return dict(sorted(neighbours.items(), key=lambda kv: -kv[1])[:cap])
    return neighbours


def strongest_first(neighbours: Iterable[tuple[str, float]]) -> tuple[tuple[str, float], ...]:
    """Neighbours ordered strongest first (what an item publishes)."""
    return tuple(sorted(neighbours, key=lambda kv: -kv[1]))


def recent_items(user: UserState, n: int) -> list[str]:
    """The user's last ``n`` distinct positive items, most recent first."""
    out: list[str] = []
    for entry in reversed(user.history):
        if entry[2] > 0 and entry[0] not in out:
            out.append(entry[0])
            if len(out) == n:
                break
    return out


def covisit_pairs(user: UserState, item_id: str, window: int, into: CoVisits) -> None:
    """Add the pairs of a positive event on ``item_id`` by ``user`` (state before the
    event) to ``into``: both directions, weight ``1 / distance``."""
    into.positives.append(item_id)
    dist = 0
    for other in recent_items(user, window):
        dist += 1
        if other == item_id:
            continue
        w = 1.0 / dist
        into.a += (item_id, other)
        into.b += (other, item_id)
        into.w += (w, w)


class CoVisitTable:
    """Bounded co-visitation neighbours and occurrence counts per item (in memory: the
    in-process model and replay; the job keeps the same sums in item-keyed state)."""

    def __init__(self, max_neighbours: int = 100) -> None:
        self.max_neighbours = max_neighbours
        self.neighbours: dict[str, dict[str, float]] = {}
        self.count: dict[str, float] = {}
        # sqrt(count) where count > 1, else 1: the cosine's denominator, kept beside the
        # count because a user's scores need it for every neighbour of every recent item.
        self._root: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self.neighbours)

    def add(self, increments: CoVisits) -> None:
        """Apply a bundle's increments."""
        count = self.count
        for item in increments.positives:
            count[item] = count.get(item, 0.0) + 1.0
            self._set_root(item)
        cap = self.max_neighbours
        table = self.neighbours
        for a, b, w in zip(increments.a, increments.b, increments.w, strict=True):
            table[a] = add_pair(table.get(a, {}), b, w, cap)

    def set_item(self, item_id: str, neighbours: Sequence[tuple[str, float]],
                 count: float) -> None:
        """An item's neighbours and count as its owner published them (the job's replica)."""
        if neighbours:
            self.neighbours[item_id] = dict(neighbours)
        else:
            self.neighbours.pop(item_id, None)
        self.count[item_id] = count
        self._set_root(item_id)

    def _set_root(self, item_id: str) -> None:
        n = self.count[item_id]
        self._root[item_id] = math.sqrt(n) if n > 1.0 else 1.0

    def forget_item(self, item_id: str) -> None:
        """Drop an item's own neighbours and count (others' links fade by pruning)."""
        self.neighbours.pop(item_id, None)
        self.count.pop(item_id, None)
        self._root.pop(item_id, None)

    def scores(self, recent: Sequence[str], window: int) -> dict[str, list]:
        """Item -> ``[score over all recent items, score from the last one, strongest
        source item, that source's share]`` for a user's last ``window`` distinct items
        ``recent`` (most recent first)."""
        out: dict[str, list] = {}
        root = self._root.get
        for pos, src in enumerate(recent[:window]):
            nb = self.neighbours.get(src)
            if not nb:
                continue
            w_src = (window - pos) / (window * root(src, 1.0))
            for item, c in nb.items():
                v = w_src * c / root(item, 1.0)
                cur = out.get(item)
                if cur is None:
                    out[item] = [v, v if pos == 0 else 0.0, src, v]
                else:
                    cur[0] += v
                    if v > cur[3]:
                        cur[2], cur[3] = src, v
        return out
