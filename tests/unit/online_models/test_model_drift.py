"""Drift handling: ADWIN on the prequential hit stream restarts the learning-rate schedule."""

from __future__ import annotations

from freshrec.generator import Storefront
from online_models import FreshRecModel, ModelConfig, lr_schedule
from online_models.evaluate import prequential

DRIFT_AT = 1500


class _Recording(FreshRecModel):
    """FreshRecModel that notes when a drift is detected and the schedule step it reset."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.events_seen = 0
        self.detected: list[tuple[int, int]] = []  # (event index, step before the reset)

    def learn_one(self, event):  # type: ignore[no-untyped-def]
        super().learn_one(event)
        self.events_seen += 1

    def observe(self, hit: bool) -> bool:
        step = self.step
        drifted = super().observe(hit)
        if drifted:
            self.detected.append((self.events_seen, step))
        return drifted


def test_planted_shift_is_detected_and_restarts_the_lr_schedule() -> None:
    # Every cluster's tastes move to other categories at DRIFT_AT: the hit rate drops.
    shop = Storefront(seed=1, n_users=40, n_items=200, n_categories=8, taste_strength=1.0,
                      drift_at=DRIFT_AT)
    events = list(shop.events(3000))
    cfg = ModelConfig(dim=16, seed=1, exploration=0.0, lr_decay_events=500.0)
    model = _Recording(cfg)
    res = prequential({"freshrec": model}, events)["freshrec"]

    assert shop.truth.drift_event_index == DRIFT_AT
    assert res.drifts == len(model.detected) >= 1
    first_at, step_before = model.detected[0]
    # Detected after the shift (no false alarm on the stationary part), and soon after it.
    assert DRIFT_AT <= first_at <= DRIFT_AT + 600
    # The schedule had decayed and restarted at the detection: the step counter counts
    # only the events learned since the last detection, so the rate is back up.
    last_at = model.detected[-1][0]
    assert step_before > 1000
    assert model.step <= model.events_seen - last_at + 1
    assert lr_schedule(model.step, cfg) > lr_schedule(step_before, cfg)
    # Still learning after the shift: the last part recovers most of the old hit rate.
    hits = res.hit_series
    n = len(hits)
    before = sum(hits[: n // 2]) / (n // 2)
    tail = sum(hits[-n // 5:]) / (n // 5)
    assert tail > 0.8 * before
