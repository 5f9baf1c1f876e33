"""Item-to-item co-visitation learned online: the items people touch together.

Each positive event pairs its item with the user's last ``covisit_window`` distinct positive
items, weighted ``1 / distance`` (the item just before counts most), in both directions
(Amazon's item-to-item CF; the co-visitation matrices of the OTTO session-recommendation
winners). The bundle learner (:func:`online_models.bundle.learn_bundle`) computes a
bundle's increments from the users' states, so the owner of an item can sum them like
gradients; :class:`CoVisitTable` keeps, per item, its positive-event count and between
``covisit_neighbours`` and twice that many strongest neighbours (pruned to the strongest
``covisit_neighbours`` whenever they pass twice that, so a newcomer has room to earn its
place). The job's item owner keeps exactly the same in
item state and publishes all of them, so the job's replicas and the replay score alike.

A user's co-visitation score of an item is the cosine-normalised pair weight
``w(h, i) / sqrt(n_h n_i)`` summed over the user's last ``window`` distinct items ``h``,
weighted linearly by recency as V-SKNN weights a session (the most recent 1, the
``window``-th ``1 / window``); the last item's share is also kept apart (what comes right
after it).

>>> t = CoVisitTable(4, rows={"a": 0, "b": 1, "c": 2})
>>> t.add(CoVisits(["a", "b", "a"], ["b", "a", "c"], [1.0, 1.0, 0.5], ["a", "b", "c"]))
>>> sorted(t.neighbours("a").items())
[('b', 1.0), ('c', 0.5)]
>>> s = t.scores(["a"], window=5)
>>> s.rows.tolist(), s.total.round(3).tolist(), s.source.tolist()
([1, 2], [1.0, 0.5], [0, 0])
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter

import numpy as np
import orjson

from online_models.arrays import first_seen
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
    """Neighbours ordered strongest first (what an item publishes); equal weights keep
    their order (a reversed sort is stable too)."""
    return tuple(sorted(neighbours, key=itemgetter(1), reverse=True))


def recent_items(user: UserState, n: int) -> list[str]:
    """The user's last ``n`` distinct positive items, most recent first (none for 0)."""
    if n <= 0:
        return []
    out: list[str] = []
    for entry in reversed(user.history):
        if entry[2] > 0 and entry[0] not in out:
            out.append(entry[0])
            if len(out) == n:
                break
    return out


@dataclass(slots=True)
class CoVisitScores:
    """A user's co-visitation scores, one entry per replica row, in the order the rows are
    first met (the most recent item's neighbours first)."""

    rows: np.ndarray    # int64 replica rows
    total: np.ndarray   # float64 score over all recent items
    last: np.ndarray    # float64 the share of the last item
    source: np.ndarray  # int64 place in ``recent`` of the item giving the largest share

    def __len__(self) -> int:
        return self.rows.shape[0]


_NO_SCORES = CoVisitScores(np.zeros(0, np.int64), np.zeros(0), np.zeros(0),
                           np.zeros(0, np.int64))


class _Neighbours:
    """One item's neighbours as arrays (codes, summed weights) in the order first paired,
    kept as :func:`add_pair` keeps a dict: pruned to the strongest ``cap`` (stable) once
    they pass twice that. Scoring reads the arrays as they are."""

    __slots__ = ("codes", "n", "slot", "weights")

    def __init__(self, codes: np.ndarray, weights: np.ndarray, n: int) -> None:
        self.codes, self.weights, self.n = codes, weights, n  # the first n are in use
        self.slot: dict[int, int] | None = None  # code -> index, built on the first add

    def add(self, code: int, w: float, cap: int) -> None:
        slot = self.slot
        if slot is None:
            slot = self.slot = {c: j for j, c in enumerate(self.codes[: self.n].tolist())}
        j = slot.get(code)
        if j is None:
            j = slot[code] = self.n
            if j == self.codes.shape[0]:
                self.codes = np.concatenate((self.codes, np.zeros(max(j, 4), np.int64)))
                self.weights = np.concatenate((self.weights, np.zeros(max(j, 4))))
            self.codes[j] = code
            self.weights[j] = 0.0
            self.n += 1
        self.weights[j] += w
        if self.n > 2 * cap:
            keep = np.argsort(-self.weights[: self.n], kind="stable")[:cap]
            self.codes, self.weights = self.codes[keep], self.weights[keep]
            self.n, self.slot = cap, None


class CoVisitTable:
    """Bounded co-visitation neighbours and occurrence counts per item (in memory: the
    in-process model and replay; the job keeps the same sums in item-keyed state).

    Items get dense codes on first sight and their neighbours are arrays, so a user's scores
    are array work (a Python loop over up to 200 neighbours of each of 10 recent items cost
    more than the rest of a list). ``rows`` is the index of the replica the scores are for
    (item id -> row); a row never moves, so the table keeps them by code.
    """

    def __init__(self, max_neighbours: int, rows: Mapping[str, int]) -> None:
        self.max_neighbours = max_neighbours
        self.count: dict[str, float] = {}
        self._rows = rows
        self._code: dict[str, int] = {}
        self._ids: list[str] = []
        self._neighbours: dict[int, _Neighbours] = {}
        # Per code: sqrt(count) where count > 1, else 1 (the cosine's denominator), and the
        # replica row (-1 while the replica does not have the item).
        self._root = np.ones(1024)
        self._row = np.full(1024, -1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._neighbours)

    def _code_of(self, item_id: str) -> int:
        c = self._code.get(item_id)
        if c is None:
            c = self._code[item_id] = len(self._ids)
            self._ids.append(item_id)
            if c == self._root.shape[0]:
                self._root = np.concatenate((self._root, np.ones(c)))
                self._row = np.concatenate((self._row, np.full(c, -1, dtype=np.int64)))
        return c

    def neighbours(self, item_id: str) -> dict[str, float]:
        """An item's neighbours and their summed pair weights."""
        c = self._code.get(item_id)
        nb = self._neighbours.get(c) if c is not None else None
        if nb is None:
            return {}
        ids = self._ids
        return {ids[k]: w for k, w in zip(nb.codes[: nb.n].tolist(),
                                          nb.weights[: nb.n].tolist(), strict=True)}

    def add(self, increments: CoVisits) -> None:
        """Apply a bundle's increments."""
        count = self.count
        for item in increments.positives:
            count[item] = count.get(item, 0.0) + 1.0
            self._set_root(item)
        cap, code, table = self.max_neighbours, self._code_of, self._neighbours
        for a, b, w in zip(increments.a, increments.b, increments.w, strict=True):
            ca = code(a)
            nb = table.get(ca)
            if nb is None:
                nb = table[ca] = _Neighbours(np.zeros(4, np.int64), np.zeros(4), 0)
            nb.add(code(b), w, cap)

    def set_item_columns(self, item_id: str, ids: Sequence[str], weights: np.ndarray,
                         count: float) -> None:
        """An item's neighbours and count as its owner published them (the job's replica):
        the neighbours as columns (ids, float64 weights, which the table keeps)."""
        c = self._code_of(item_id)
        n = len(ids)
        if n:
            try:
                codes = np.fromiter(map(self._code.get, ids), dtype=np.int64, count=n)
            except TypeError:  # ids met for the first time get codes
                codes = np.fromiter(map(self._code_of, ids), dtype=np.int64, count=n)
            self._neighbours[c] = _Neighbours(codes, weights, n)
        else:
            self._neighbours.pop(c, None)
        self.count[item_id] = count
        self._set_root(item_id)

    def _set_root(self, item_id: str) -> None:
        n, c = self.count[item_id], self._code_of(item_id)  # the code may grow the arrays
        self._root[c] = math.sqrt(n) if n > 1.0 else 1.0

    def forget_item(self, item_id: str) -> None:
        """Drop an item's own neighbours and count (others' links fade by pruning)."""
        c = self._code.get(item_id)
        if c is None:
            return
        self._neighbours.pop(c, None)
        self.count.pop(item_id, None)
        self._root[c] = 1.0

    def scores(self, recent: Sequence[str], window: int) -> CoVisitScores:
        """The co-visitation scores of the replica rows near a user's last ``window``
        distinct items ``recent`` (most recent first); items the replica does not have yet
        are left out."""
        return self.scores_many([recent], window)[0]

    def scores_many(self, recents: Sequence[Sequence[str]], window: int
                    ) -> list[CoVisitScores]:
        """:meth:`scores` of several users with one pass of array work (the job scores
        its due lists together)."""
        codes_at: list[np.ndarray] = []
        weights_at: list[np.ndarray] = []
        scales: list[float] = []
        places: list[int] = []
        owners: list[int] = []
        for owner, recent in enumerate(recents):
            for place, src in enumerate(recent[:window]):
                c = self._code.get(src)
                nb = self._neighbours.get(c) if c is not None else None
                if nb is None or not nb.n:
                    continue
                codes_at.append(nb.codes[: nb.n])
                weights_at.append(nb.weights[: nb.n])
                scales.append((window - place) / (window * self._root[c]))
                places.append(place)
                owners.append(owner)
        if not codes_at:
            return [_NO_SCORES] * len(recents)
        sizes = [a.shape[0] for a in codes_at]
        codes = np.concatenate(codes_at)
        v = (np.concatenate(weights_at) * np.repeat(np.array(scales), sizes)
             / self._root[codes])
        place = np.repeat(np.array(places, dtype=np.int64), sizes)
        n_codes = len(self._ids)
        # One key per (user, item), grouped in first-met order: users in turn, each
        # user's rows as their items met them (a user's entries are contiguous).
        key = np.repeat(np.array(owners, dtype=np.int64), sizes) * n_codes + codes
        first, inv = first_seen(key, len(recents) * n_codes)
        uniq = key[first]
        # bincount sums in input order: the same sums as a loop over the sources.
        total = np.bincount(inv, weights=v, minlength=uniq.shape[0])
        last = np.bincount(inv, weights=np.where(place == 0, v, 0.0), minlength=uniq.shape[0])
        # The largest share per item, the most recent source on a tie: the first such entry,
        # as each user's entries run from their most recent source on.
        best = np.full(uniq.shape[0], -np.inf)
        np.maximum.at(best, inv, v)
        top = np.flatnonzero(v == best[inv])
        first_top = np.full(uniq.shape[0], v.shape[0], dtype=np.int64)
        np.minimum.at(first_top, inv[top], top)
        source = place[first_top]
        item = uniq % n_codes
        rows = self._row[item]
        for j in np.flatnonzero(rows < 0).tolist():
            r = self._rows.get(self._ids[item[j]], -1)
            if r >= 0:
                self._row[item[j]] = rows[j] = r
        known = rows >= 0
        rows, owner = rows[known], uniq[known] // n_codes
        bounds = np.searchsorted(owner, np.arange(len(recents) + 1))
        total, last, source = total[known], last[known], source[known]
        return [CoVisitScores(rows[a:b], total[a:b], last[a:b], source[a:b]) if b > a
                else _NO_SCORES for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(),
                                                strict=True)]
