"""The array helpers of the list path: the scratch path agrees with the sort path."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from online_models import arrays
from online_models.arrays import first_seen, positions

pytestmark = pytest.mark.unit


def _first_seen_by_hand(keys: list[int]) -> tuple[list[int], list[int]]:
    seen: dict[int, int] = {}
    firsts: list[int] = []
    groups: list[int] = []
    for j, k in enumerate(keys):
        if k not in seen:
            seen[k] = len(firsts)
            firsts.append(j)
        groups.append(seen[k])
    return firsts, groups


@pytest.mark.parametrize("seed", range(5))
def test_first_seen_matches_a_loop_on_both_paths(seed: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 300, size=int(rng.integers(1, 2_000)))
    expected = _first_seen_by_hand(keys.tolist())
    first, group = first_seen(keys, 300)
    assert (first.tolist(), group.tolist()) == expected
    monkeypatch.setattr(arrays, "_SCRATCH_KEYS", 10)  # the sort path
    first, group = first_seen(keys, 300)
    assert (first.tolist(), group.tolist()) == expected


def test_first_seen_of_nothing() -> None:
    first, group = first_seen(np.zeros(0, dtype=np.int64), 10)
    assert first.shape == group.shape == (0,)


@pytest.mark.parametrize("sort_path", [False, True])
def test_positions_ignore_stale_scratch(sort_path: bool,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    if sort_path:
        monkeypatch.setattr(arrays, "_SCRATCH_KEYS", 10)
    # An earlier call leaves positions in the scratch; absent keys must still read -1.
    positions(np.arange(100), np.arange(100), 100)
    keys = np.array([42, 7, 99, 3])
    got = positions(keys, np.array([3, 4, 42, 99, 0, 7, 50]), 100)
    assert got.tolist() == [3, -1, 0, 2, -1, 1, -1]
    assert positions(np.zeros(0, dtype=np.int64), np.array([1, 2]), 10).tolist() == [-1, -1]


def test_each_thread_has_its_own_scratch() -> None:
    rng = np.random.default_rng(1)
    keys = [rng.integers(0, 5_000, size=3_000) for _ in range(4)]
    expected = [_first_seen_by_hand(k.tolist()) for k in keys]
    wrong: list[int] = []

    def work(j: int) -> None:
        for _ in range(50):
            first, group = first_seen(keys[j], 5_000)
            if (first.tolist(), group.tolist()) != expected[j]:
                wrong.append(j)

    threads = [threading.Thread(target=work, args=(j,)) for j in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
