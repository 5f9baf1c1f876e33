"""The score blends user-update keeps in state at each barrier come back whole after a
restore, at the learning rates of the settings the restored job runs with."""

from __future__ import annotations

import numpy as np
import pytest

from flink_jobs.user_side import UserSide
from online_models.blend import BlendSelection, pack_blends, unpack_blends
from online_models.experiments import Experiment
from tests.unit.flink_jobs.bundle_sides import CFG, T0, Store, catalogue, event, settings

EXPERIMENT = Experiment.from_mapping({"key": "k", "variants": {
    "control": {"share": 0.5}, "more-recent": {"share": 0.5, "recency_boost": 4.0}}})


def learned_side(**changes: object) -> UserSide:
    """A side whose blends have taken steps: known users' views over four bundles."""
    side, store = UserSide(settings(**changes)), Store()
    catalogue(side)
    for round_ in range(4):
        records = [event(100 * round_ + j, f"u{j}", f"i{(3 * j + round_) % 30}")
                   for j in range(12)]
        store.apply(side.process(records, store.load, now=T0 + 1000 * round_).writes)
    return side


def same(a: BlendSelection, b: BlendSelection) -> bool:
    return (a.ranked == b.ranked and a.sampled == b.sampled
            and (a.lead, a.steps) == (b.lead, b.steps))


def test_kept_blends_come_back_whole() -> None:
    side = learned_side()
    start = BlendSelection.initial(CFG)
    assert side.blend_schedule.chances == 36  # the known users' views of rounds 2-4
    assert not np.array_equal(side.blend.ranked.weights, start.ranked.weights)
    assert not np.array_equal(side.blend.sampled.interactions.v, start.sampled.interactions.v)
    restored = UserSide(settings())
    assert restored.restore_blends(side.kept_blends()) == ["default"]
    assert restored.blend is restored.blends[None] and same(restored.blend, side.blend)
    assert restored.blend_schedule.chances == 36
    # Today's settings name the learning rate; the weights are the kept ones.
    slower = UserSide(settings(config=CFG.replace(blend_learning_rate=0.01)))
    slower.restore_blends(side.kept_blends())
    assert slower.blend.ranked.learning_rate == slower.blend.sampled.learning_rate == 0.01
    assert np.array_equal(slower.blend.sampled.weights, side.blend.sampled.weights)


def test_each_variant_gets_its_own_blends_back_and_the_unknown_are_left_out() -> None:
    side = learned_side(experiment=EXPERIMENT)
    kept = side.kept_blends()
    again = UserSide(settings(experiment=EXPERIMENT))
    assert sorted(again.restore_blends(kept)) == ["control", "default", "more-recent"]
    for name in ("control", "more-recent"):
        assert same(again.blends[name], side.blends[name])
    assert not same(again.blends["control"], again.blends["more-recent"])
    # Without the experiment only the settings' own blends have a place.
    plain = UserSide(settings())
    assert plain.restore_blends(kept) == ["default"] and set(plain.blends) == {None}


def test_kept_blends_that_are_cut_short_or_not_blends_are_refused() -> None:
    blob = pack_blends(3, {"": BlendSelection.initial(CFG)})
    assert unpack_blends(blob)[0] == 3
    with pytest.raises(ValueError, match=r"need .* bytes"):
        unpack_blends(blob[:-8])
    with pytest.raises(ValueError, match="cut short"):
        unpack_blends(blob[:12])
    with pytest.raises(ValueError, match="not kept score blends"):
        unpack_blends(b"FV3" + blob[3:])
