"""Array helpers shared by the list features and the co-visitation scores.

>>> firsts, group = group_keys(np.array([7, 3, 7, 5, 3]))
>>> firsts.tolist(), group.tolist()
([1, 3, 0], [2, 0, 2, 1, 0])
"""

from __future__ import annotations

import numpy as np


def group_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Equal keys as groups, the groups in key order: each group's first index in ``keys``
    and each entry's group. ``np.unique(keys, return_index=True, return_inverse=True)[1:]``
    without its stable sort (the first index is the smallest of a group's, in any order),
    about twice as fast at a few thousand keys."""
    by_key = np.argsort(keys)
    sorted_keys = keys[by_key]
    first = np.ones(keys.shape[0], dtype=bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    firsts = (np.minimum.reduceat(by_key, np.flatnonzero(first)) if keys.shape[0]
              else by_key)
    group = np.empty(keys.shape[0], dtype=np.int64)
    group[by_key] = np.cumsum(first) - 1
    return firsts, group
