"""Co-visitation, the online score blend and the neighbourhood baselines."""

from __future__ import annotations

import numpy as np
import pytest

from freshrec_common.settings import SettingsError, load_settings
from online_models import FreshRecModel, ItemReplica, ModelConfig, UserState, learn_bundle
from online_models.blend import COVISIT_LAST, FEATURES, RECENT_POSITION, ScoreBlend
from online_models.covisit import CoVisits, CoVisitTable, covisit_pairs
from schemas.events import Event

pytestmark = pytest.mark.unit
CFG = ModelConfig(dim=8, seed=5, exploration=0.0)


def _views(user: str, items: list[str], t0: int = 0) -> list[Event]:
    return [Event(f"{user}-{t0}-{n}", "view", t0 + 1000 * n, user_id=user, item_id=item)
            for n, item in enumerate(items)]


def test_pairs_weigh_by_distance_in_both_directions_and_skip_the_item_itself() -> None:
    user = UserState.new("u", 8, 0).replace(history=(
        ("a", 1, 1.0, "view"), ("b", 2, 1.0, "view"), ("d", 3, 1.0, "view"),
        ("c", 4, 1.0, "view"), ("x", 5, -1.0, "unfavorite")))
    out = CoVisits()
    covisit_pairs(user, "d", window=3, into=out)
    # recent distinct positive items, newest first: c, d, b (window 3); d is the item itself
    assert list(zip(out.a, out.b, out.w, strict=True)) == [
        ("d", "c", 1.0), ("c", "d", 1.0), ("d", "b", 1 / 3), ("b", "d", 1 / 3)]
    assert out.positives == ["d"]


def test_table_keeps_the_strongest_neighbours() -> None:
    t = CoVisitTable(max_neighbours=2)
    inc = CoVisits()
    for n, w in enumerate([5.0, 1.0, 4.0, 0.5, 3.0]):
        inc.a.append("a")
        inc.b.append(f"n{n}")
        inc.w.append(w)
    t.add(inc)
    assert set(t.neighbours["a"]) == {"n0", "n2"}  # pruned at 2x the cap, to the cap


def test_scores_survive_items_published_without_events() -> None:
    # The changelog can carry neighbours of an item whose count is still 0 (pairs reached
    # its owner before any positive event did): no division by zero.
    t = CoVisitTable()
    t.set_item("a", [("b", 1.0)], 0.0)
    t.set_item("b", [], 0.0)
    assert t.scores(["a"], window=5)["b"][0] == 1.0


def test_older_recent_items_count_linearly_less_and_none_past_the_window() -> None:
    t = CoVisitTable()
    for src, nb in (("x", "p"), ("y", "q"), ("w", "r")):
        t.set_item(src, [(nb, 1.0)], 1.0)
    s = t.scores(["x", "y", "w"], window=2)  # most recent first
    assert s["p"][:2] == [1.0, 1.0]  # the last item: full weight, and its own column
    assert s["q"][:2] == [0.5, 0.0]  # one place older: (2 - 1) / 2
    assert "r" not in s  # past the window


def test_bundle_pairs_a_users_second_event_with_the_first() -> None:
    rep = ItemReplica(CFG)
    step = learn_bundle({}, _views("u", ["a", "b"]) + _views("v", ["c"]), rep, CFG)
    pairs = set(zip(step.covisits.a, step.covisits.b, strict=True))
    assert pairs == {("b", "a"), ("a", "b")}
    assert sorted(step.covisits.positives) == ["a", "b", "c"]


def test_blend_learns_that_the_next_item_follows_the_last_one() -> None:
    # Every user walks the same chain i0 -> i1 -> ... : the next item is always the last
    # one's co-visited neighbour and never a repeat, so the co-visitation weight must rise
    # and the recent-history weight fall.
    cfg = CFG.replace(cold_events=0)  # the newcomer's list is not a cold one
    model = FreshRecModel(cfg)
    start = ScoreBlend.initial(cfg).weights
    chain = [f"i{n}" for n in range(8)]
    for u in range(60):
        for ev in _views(f"u{u}", chain, t0=u * 100_000):
            model.learn_one(ev)
    w = model.blend.weights
    assert w[COVISIT_LAST] > start[COVISIT_LAST]
    assert w[RECENT_POSITION] < start[RECENT_POSITION]
    recs = model.recommend("newcomer", k=3)
    assert recs  # a stranger still gets a list
    model.learn_one(Event("n1", "view", 10**9, user_id="newcomer", item_id="i3"))
    top = model.recommend("newcomer", k=3)
    # i3's co-visited neighbours (both directions) lead; the item itself comes next
    assert {r.item_id for r in top[:2]} == {"i2", "i4"}
    assert {r.reason for r in top[:2]} == {"often viewed with i3"}


def test_blend_bytes_round_trip_and_reject_other_layouts() -> None:
    b = ScoreBlend.initial(CFG)
    b.learn(np.eye(len(FEATURES)), 2)
    assert ScoreBlend.from_bytes(b.to_bytes()) == b
    with pytest.raises(ValueError, match="not a score blend"):
        ScoreBlend.from_bytes(b"XYZ" + b.to_bytes()[3:])


@pytest.mark.parametrize("override", [
    "model.covisit_window=0", "model.covisit_neighbours=-1", "model.blend_learning_rate=-0.1",
    "model.blend_learning_rate=inf"])
def test_covisit_and_blend_settings_are_validated(override: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(SettingsError, match=key.replace(".", r"\.")):
        load_settings(None, env={}, overrides=[override])


def test_blend_keeps_co_visitation_where_many_items_have_some() -> None:
    # 300 items all co-visited with the user's recent ones, the taken item drawn with odds
    # exp(2 * covisit): co-visitation predicts it, yet it is often outside the top rows.
    # A blend that learned only among the top rows (chosen for their high co-visitation)
    # saw the taken item below their average and drove the weight down (MovieLens 100K).
    from online_models.blend import COVISIT, UserFeatures
    from online_models.scoring import blend_step

    rng = np.random.default_rng(3)
    rep = ItemReplica(CFG)
    for n in range(400):
        rep.ensure(f"i{n}")
    rows = np.arange(300, dtype=np.int64)
    values = np.zeros((300, len(FEATURES)), dtype=np.float32)
    values[:, COVISIT] = np.linspace(2.0, 0.1, 300)
    feats = UserFeatures(rows, values, {})
    blend = ScoreBlend.initial(CFG)
    start = float(blend.weights[COVISIT])
    odds = np.exp(2.0 * values[:, COVISIT])
    user = UserState.new("u", CFG.dim, 0)
    for target in rng.choice(300, size=300, p=odds / odds.sum()):
        blend_step(blend, user, rep, CFG, feats, int(target))
    assert blend.weights[COVISIT] > start + 0.5
