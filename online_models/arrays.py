"""Array helpers shared by the list features and the co-visitation scores.

>>> first, group = first_seen(np.array([7, 3, 7, 5, 3]), 8)
>>> first.tolist(), group.tolist()
([0, 1, 3], [0, 1, 0, 2, 1])
>>> positions(np.array([7, 3, 5]), np.array([5, 4, 7]), 8).tolist()
[2, -1, 0]
"""

from __future__ import annotations

import threading

import numpy as np

# Keys below this are grouped through a scratch array (int32, 8 MB at most per thread);
# larger key spaces (a million-item catalogue) sort instead.
_SCRATCH_KEYS = 1 << 21
_local = threading.local()  # the job's operators run numpy in threads of their own


def first_seen(keys: np.ndarray, key_space: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal keys (each in ``[0, key_space)``) as groups numbered in the order they are
    first met: the index of each group's first entry (ascending) and each entry's group.

    Without a sort where the key space is small: the entries are scattered into a scratch
    array last to first, so each key's slot ends up holding its first index (~5x a sort
    at the ~10k entries of a scoring call's co-visitation).
    """
    n = keys.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if key_space > _SCRATCH_KEYS or n >= 2**31:
        return _first_seen_sorted(keys)
    scratch = _scratch(key_space)
    at = np.arange(n, dtype=np.int32)
    # Only the slots written here are read back: the rest may hold anything.
    scratch[keys[::-1]] = at[::-1]
    first_of = scratch[keys]
    is_first = first_of == at
    rank = np.cumsum(is_first) - 1
    return np.flatnonzero(is_first), rank[first_of]


def positions(keys: np.ndarray, wanted: np.ndarray, key_space: int) -> np.ndarray:
    """The position of each of ``wanted`` in ``keys`` (distinct, all in
    ``[0, key_space)``), -1 where absent; through the scratch array where the key space
    is small, a sort otherwise."""
    n = keys.shape[0]
    if n == 0:
        return np.full(wanted.shape[0], -1, dtype=np.int64)
    if key_space > _SCRATCH_KEYS or n >= 2**31:
        order = np.argsort(keys)
        at = np.minimum(np.searchsorted(keys[order], wanted), n - 1)
        return np.where(keys[order[at]] == wanted, order[at], -1)
    scratch = _scratch(key_space)
    scratch[keys] = np.arange(n, dtype=np.int32)
    # A slot no key wrote holds a stale position: kept only where that key matches.
    at = np.minimum(scratch[wanted], n - 1).astype(np.int64)
    return np.where(keys[at] == wanted, at, -1)


def _scratch(key_space: int) -> np.ndarray:
    """This thread's scratch array, at least ``key_space`` long (its contents are stale)."""
    scratch = getattr(_local, "scratch", None)
    if scratch is None or scratch.shape[0] < key_space:
        scratch = _local.scratch = np.zeros(max(key_space, 1 << 16), dtype=np.int32)
    return scratch


def _first_seen_sorted(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`first_seen` with a sort, for any key space."""
    by_key = np.argsort(keys)
    sorted_keys = keys[by_key]
    starts = np.ones(keys.shape[0], dtype=bool)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    firsts = np.minimum.reduceat(by_key, np.flatnonzero(starts))  # groups in key order
    group = np.empty(keys.shape[0], dtype=np.int64)
    group[by_key] = np.cumsum(starts) - 1
    kept = np.sort(firsts)
    rank = np.empty(keys.shape[0], dtype=np.int64)
    rank[kept] = np.arange(kept.shape[0])
    return kept, rank[firsts][group]
