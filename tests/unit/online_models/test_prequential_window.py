"""The job's live prequential metrics: rolling windows over test-then-learn outcomes."""

from __future__ import annotations

import math
import random

import pytest

from online_models.streaming import PrequentialWindow


@pytest.mark.parametrize("reads_every", [1, 7, 10_000])
def test_windows_hold_the_last_outcomes_however_often_they_are_read(reads_every: int) -> None:
    rng = random.Random(3)
    shown = [f"i{j}" for j in range(20)]
    window = PrequentialWindow(k=20, window=50)
    outcomes: list[tuple[float, float, float]] = []
    for n in range(5_000):  # more than the window and than the outcomes kept unsettled
        item = rng.choice(shown) if rng.random() < 0.4 else "other"
        rank = shown.index(item) if item in shown else -1
        assert window.update(shown, item) is (rank >= 0)
        outcomes.append((float(rank >= 0), float(0 <= rank < 10),
                         1.0 / math.log2(rank + 2) if rank >= 0 else 0.0))
        if n % reads_every == 0:
            last = outcomes[-50:]
            assert window.hit_rate == pytest.approx(sum(o[0] for o in last) / len(last))
    last = outcomes[-50:]
    assert window.hit_rate == pytest.approx(sum(o[0] for o in last) / 50)
    assert window.recall_at_10 == pytest.approx(sum(o[1] for o in last) / 50)
    assert window.ndcg == pytest.approx(sum(o[2] for o in last) / 50)
    assert 0 < window.recall_at_10 < window.hit_rate < 1


def test_no_outcome_yet_reads_zero() -> None:
    window = PrequentialWindow(k=20)
    assert (window.hit_rate, window.recall_at_10, window.ndcg) == (0.0, 0.0, 0.0)
