"""Co-visitation, the online score blend and the neighbourhood baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest

from freshrec_common.settings import SettingsError, load_settings
from online_models import FreshRecModel, ItemReplica, ModelConfig, UserState, learn_bundle
from online_models.blend import COVISIT_LAST, FEATURES, RECENT_POSITION, ScoreBlend
from online_models.covisit import CoVisits, CoVisitTable, recent_items
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
    step = learn_bundle({"u": user}, [Event("e", "view", 6, user_id="u", item_id="d")],
                        ItemReplica(CFG), CFG.replace(covisit_window=3))
    out = step.covisits
    # recent distinct positive items, newest first: c, d, b (window 3); d is the item itself
    assert list(zip(out.a, out.b, out.w, strict=True)) == [
        ("d", "c", 1.0), ("c", "d", 1.0), ("d", "b", 1 / 3), ("b", "d", 1 / 3)]
    assert out.positives == ["d"]


def test_a_window_of_zero_turns_co_visitation_off() -> None:
    cfg = CFG.replace(covisit_window=0)
    user = UserState.new("u", 8, 0).replace(history=(("a", 1, 1.0, "view"),
                                                     ("b", 2, 1.0, "view")))
    step = learn_bundle({"u": user}, [Event("e", "view", 3, user_id="u", item_id="c")],
                        ItemReplica(cfg), cfg)
    assert (step.covisits.a, step.covisits.positives) == ([], ["c"])
    assert recent_items(user, 0) == [] and recent_items(user, 5) == ["b", "a"]
    reasons = {}
    for window in (0, CFG.covisit_window):  # the same chain of views, with and without
        model = FreshRecModel(CFG.replace(covisit_window=window, cold_events=0))
        for u in range(20):
            model.learn_many(_views(f"u{u}", [f"i{n}" for n in range(8)], t0=u * 100_000))
        model.learn_one(Event("n1", "view", 10**9, user_id="newcomer", item_id="i3"))
        reasons[window] = {r.reason for r in model.recommend("newcomer", k=5)}
    assert "often viewed with i3" in reasons[CFG.covisit_window]
    assert reasons[0] and not any(r.startswith("often viewed with") for r in reasons[0])


def test_table_keeps_the_strongest_neighbours() -> None:
    t = CoVisitTable(2, rows={})
    inc = CoVisits()
    for n, w in enumerate([5.0, 1.0, 4.0, 0.5, 3.0]):
        inc.a.append("a")
        inc.b.append(f"n{n}")
        inc.w.append(w)
    t.add(inc)
    assert set(t.neighbours("a")) == {"n0", "n2"}  # pruned at 2x the cap, to the cap


def test_scores_survive_items_published_without_events() -> None:
    # The changelog can carry neighbours of an item whose count is still 0 (pairs reached
    # its owner before any positive event did): no division by zero.
    t = CoVisitTable(100, rows={"a": 0, "b": 1})
    t.set_item_columns("a", ["b"], np.ones(1), 0.0)
    t.set_item_columns("b", [], np.zeros(0), 0.0)
    assert t.scores(["a"], window=5).total.tolist() == [1.0]


def test_older_recent_items_count_linearly_less_and_none_past_the_window() -> None:
    rows = {"x": 0, "y": 1, "w": 2, "p": 3, "q": 4, "r": 5}
    t = CoVisitTable(100, rows)
    for src, nb in (("x", "p"), ("y", "q"), ("w", "r")):
        t.set_item_columns(src, [nb], np.ones(1), 1.0)
    s = t.scores(["x", "y", "w"], window=2)  # most recent first
    assert s.rows.tolist() == [3, 4]  # r: past the window
    assert s.total.tolist() == [1.0, 0.5]  # one place older: (2 - 1) / 2
    assert s.last.tolist() == [1.0, 0.0]  # the last item's own column


def _scores_by_loop(t: CoVisitTable, rows: dict[str, int], recent: list[str], window: int
                    ) -> dict[int, tuple[float, float, int]]:
    """The definition, one neighbour at a time: row -> (total, last, source place)."""
    root = {i: math.sqrt(n) if n > 1 else 1.0 for i, n in t.count.items()}
    out: dict[int, list] = {}
    for place, src in enumerate(recent[:window]):
        w_src = (window - place) / (window * root.get(src, 1.0))
        for item, c in t.neighbours(src).items():
            if item not in rows:
                continue
            v = w_src * c / root.get(item, 1.0)
            cur = out.setdefault(rows[item], [0.0, 0.0, place, v])
            cur[0] += v
            cur[1] += v if place == 0 else 0.0
            if v > cur[3]:
                cur[2], cur[3] = place, v
    return {r: (a, b, p) for r, (a, b, p, _) in out.items()}


def test_scores_sum_every_recent_items_share_and_name_the_largest() -> None:
    rng = np.random.default_rng(3)
    items = [f"i{n}" for n in range(60)]
    rows = {i: n for n, i in enumerate(items[:50])}  # the replica lacks i50..i59 for now
    t = CoVisitTable(8, rows)
    for _ in range(40):
        pairs = CoVisits()
        for _ in range(50):
            a, b = rng.choice(items, 2, replace=False).tolist()
            pairs.a.append(a)
            pairs.b.append(b)
            pairs.w.append(float(rng.choice([1.0, 0.5, 1 / 3])))
        pairs.positives = rng.choice(items, 20).tolist()
        t.add(pairs)
        recent = rng.choice(items, 10, replace=False).tolist()
        got = t.scores(recent, 7)
        want = _scores_by_loop(t, rows, recent, 7)
        assert sorted(got.rows.tolist()) == sorted(want)
        for r, total, last, src in zip(got.rows.tolist(), got.total.tolist(),
                                       got.last.tolist(), got.source.tolist(), strict=True):
            assert (total, last, src) == pytest.approx(want[r], rel=1e-12)
        # Users scored together get what each gets alone, in the same order.
        others = [rng.choice(items, int(n), replace=False).tolist() for n in (3, 0, 10)]
        users = [others[0], recent, others[1], others[2], recent]
        for one, together in zip(users, t.scores_many(users, 7), strict=True):
            alone = t.scores(one, 7)
            for field in ("rows", "total", "last", "source"):
                np.testing.assert_array_equal(getattr(together, field), getattr(alone, field))
    rows.update({i: 50 + n for n, i in enumerate(items[50:])})  # now the replica has them
    got = t.scores(recent, 7)
    assert sorted(got.rows.tolist()) == sorted(_scores_by_loop(t, rows, recent, 7))
    for n in range(3000):  # past the table's first allocation
        rows[f"x{n}"] = 60 + n
        t.set_item_columns(f"x{n}", [f"x{n - 1}"], np.ones(1), 4.0)
    assert t.scores(["x2999"], 7).total.tolist() == [0.25]  # 1 / (2 * 2)


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


@pytest.mark.parametrize("units", [0, 8])
def test_blend_bytes_round_trip_and_reject_other_layouts(units: int) -> None:
    b = ScoreBlend.initial(CFG, units)
    b.learn(np.eye(len(FEATURES)), 2)
    assert ScoreBlend.from_bytes(b.to_bytes()) == b
    assert (b.interactions is None) == (units == 0)
    with pytest.raises(ValueError, match="not a score blend"):
        ScoreBlend.from_bytes(b"XYZ" + b.to_bytes()[3:])
    if units:
        other = ScoreBlend.initial(CFG, units)
        assert other != b  # the layer learned too
        with pytest.raises(ValueError, match="interaction layer of 8 units"):
            ScoreBlend.from_bytes(b.to_bytes()[:-8])


def test_the_interaction_layer_ranks_what_a_linear_blend_cannot() -> None:
    # Users take an item that is co-visited or recent, never both or neither (XOR): a
    # linear score puts "both" above one of the two, the interaction layer learns it.
    rows = np.zeros((4, len(FEATURES)))
    rows[[1, 3], COVISIT_LAST] = 1.0
    rows[[2, 3], RECENT_POSITION] = 1.0
    blends = {units: ScoreBlend.initial(CFG, units) for units in (0, 16)}
    for target in np.random.default_rng(1).integers(1, 3, size=3_000):
        for blend in blends.values():
            blend.learn(rows, int(target))

    def top_two(blend: ScoreBlend) -> set[int]:
        z = rows[:, 1:] @ blend.weights[1:] + (
            0.0 if blend.interactions is None else blend.interactions.out(rows[:, 1:]))
        return set(np.argsort(-z)[:2].tolist())

    assert top_two(blends[16]) == {1, 2}
    assert top_two(blends[0]) != {1, 2}


@pytest.mark.parametrize("override", [
    "model.covisit_window=-1", "model.covisit_neighbours=0", "model.blend_learning_rate=-0.1",
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
    from online_models.blend import COVISIT, BlendSelection, UserFeatures
    from online_models.scoring import blend_step

    rng = np.random.default_rng(3)
    rep = ItemReplica(CFG)
    for n in range(400):
        rep.ensure(f"i{n}")
    rows = np.arange(300, dtype=np.int64)
    values = np.zeros((300, len(FEATURES)), dtype=np.float32)
    values[:, COVISIT] = np.linspace(2.0, 0.1, 300)
    feats = UserFeatures(rows, values, np.full(rows.shape[0], -1), [])
    blend = BlendSelection.initial(CFG)
    start = float(blend.ranked.weights[COVISIT])
    odds = np.exp(2.0 * values[:, COVISIT])
    user = UserState.new("u", CFG.dim, 0)
    for target in rng.choice(300, size=300, p=odds / odds.sum()):
        blend_step(blend, user, rep, CFG, feats, int(target))
    assert blend.ranked.weights[COVISIT] > start + 0.5


def test_trending_items_of_the_users_latest_category_get_category_trend_and_its_reason() -> None:
    from online_models.blend import CATEGORY_TREND, user_features
    from online_models.explain import explain

    rep = ItemReplica(CFG)
    for cat in ("shoes", "books"):
        for n in range(120):
            rep.upsert(f"{cat}-{n}", meta={"category": cat}, ts_ms=0)
    # Trend rises with n in both categories; shoes-119 is the most trending shoe.
    for cat in ("shoes", "books"):
        for n in range(120):
            rep.record_trend(rep.row(f"{cat}-{n}"), float(n + 1), 1000)
    # An older book, then a shoe: the latest category is shoes.
    user = UserState.new("u", CFG.dim, CFG.seed).replace(history=(
        ("books-3", 1000, 1.0, "view"), ("shoes-2", 2000, 1.0, "view")))
    f = user_features(user, rep, CFG, now_ms=3000)
    trend = {rep.ids[r]: v[CATEGORY_TREND] for r, v in zip(f.rows.tolist(), f.values,
                                                             strict=True) if v[CATEGORY_TREND]}
    assert len(trend) == 100 and all(i.startswith("shoes-") for i in trend)
    assert trend["shoes-119"] == 1.0 and trend["shoes-118"] == 0.5
    assert "shoes-19" not in trend  # the 101st most trending
    # shoes-40 is past the 16 never-learned shoes that new_in_category names first.
    rows = np.array([rep.row("shoes-40"), rep.row("shoes-2")])
    assert explain(user, rep, rows, f) == ["trending in shoes", "you viewed this recently"]


def test_trending_rows_do_not_depend_on_the_order_items_arrived_in() -> None:
    # Replicas fill in changelog order, which differs between instances and after a
    # restore; a catalogue listed at one time ties on trend.
    ids = [f"shoes-{n}" for n in range(40)]
    orders = [ids, ids[::-1], ids[13:] + ids[:13]]
    picks = []
    for order in orders:
        rep = ItemReplica(CFG)
        for item in order:
            rep.upsert(item, meta={"category": "shoes"}, ts_ms=0)
        rep.record_trend(rep.row("shoes-7"), 5.0, 0)
        picks.append([[rep.ids[r] for r in rep.trending_rows(10, category)]
                      for category in (None, "shoes")])
    assert picks[0] == picks[1] == picks[2]
    assert picks[0][0][0] == "shoes-7" and len(picks[0][0]) == 10


def test_other_items_of_the_latest_brand_and_shelf_get_same_brand_and_price_near() -> None:
    from online_models.blend import PRICE_NEAR, SAME_BRAND, user_features

    rep = ItemReplica(CFG)
    for item, cat, brand, price in (("p1", "phones", "acme", 100.0),
                                    ("p2", "phones", "acme", 110.0),
                                    ("p3", "phones", "zeta", 400.0),
                                    ("p4", "phones", "zeta", 100.0),
                                    ("p5", "phones", "zeta", None),
                                    ("t1", "tvs", "acme", 300.0),
                                    ("t2", "tvs", "acme", 100.0)):
        rep.upsert(item, meta={"category": cat, "brand": brand, "price": price}, ts_ms=0)
    # t1 before p1: p1 is the latest item; the shelves' never-learned items are candidates.
    user = UserState.new("u", CFG.dim, CFG.seed).replace(history=(
        ("t1", 1000, 1.0, "view"), ("p1", 2000, 1.0, "view")))
    f = user_features(user, rep, CFG, now_ms=3000)
    got = {rep.ids[r]: (float(v[SAME_BRAND]), round(float(v[PRICE_NEAR]), 4))
           for r, v in zip(f.rows.tolist(), f.values, strict=True)}
    near = {"p2": 100 / 110, "p3": 100 / 400, "p4": 1.0}  # min/max of the two prices
    mean = sum(near.values()) / 3
    assert got == {
        "p1": (0.0, 0.0), "t1": (0.0, 0.0),  # the user's own items: recent_* rank them
        "p2": (1.0, round(near["p2"] - mean, 4)),
        "p3": (0.0, round(near["p3"] - mean, 4)),
        "p4": (0.0, round(near["p4"] - mean, 4)),
        "p5": (0.0, 0.0),  # no price
        "t2": (1.0, 0.0),  # the brand on another shelf: no price comparison
    }


def test_a_catalogue_without_brands_or_prices_leaves_both_features_at_zero() -> None:
    from online_models.blend import PRICE_NEAR, SAME_BRAND, user_features

    rep = ItemReplica(CFG)
    for n in range(5):
        rep.upsert(f"i{n}", meta={"category": "c"}, ts_ms=0)
    user = UserState.new("u", CFG.dim, CFG.seed).replace(history=(("i0", 1000, 1.0, "view"),))
    f = user_features(user, rep, CFG, now_ms=2000)
    assert f.rows.shape[0] == 5
    assert not f.values[:, [SAME_BRAND, PRICE_NEAR]].any()


def test_changelog_records_give_the_replica_brands_and_prices() -> None:
    # The job's replicas learn items only from the changelog: the shelf features need
    # its brand and price there.
    from online_models.learning import apply_item_embedding
    from schemas.item_embedding import ItemEmbedding

    rep = ItemReplica(CFG)
    row = apply_item_embedding(rep, ItemEmbedding(
        "p1", (0.0,) * CFG.dim, 0.0, None, 3, 1000, category="phones", brand="acme",
        price=99.5))
    bare = apply_item_embedding(rep, ItemEmbedding("p2", (0.0,) * CFG.dim, 0.0, None, 3, 1000))
    assert rep.price[row] == np.float32(99.5) and rep.brand_code[row] >= 0
    assert np.isnan(rep.price[bare]) and rep.brand_code[bare] == -1


def test_trending_items_of_the_latest_brand_on_its_shelf_get_brand_trend_and_its_reason() -> None:
    from online_models.blend import BRAND_TREND, CATEGORY_TREND, user_features
    from online_models.explain import explain

    rep = ItemReplica(CFG)
    # 160 phones, every fourth of brand acme; 5 acme TVs; trend rises with n.
    for n in range(160):
        rep.upsert(f"p{n}", meta={"category": "phones",
                                  "brand": "acme" if n % 4 == 0 else "zeta"}, ts_ms=0)
        rep.record_trend(rep.row(f"p{n}"), float(n + 1), 1000)
    for n in range(5):
        rep.upsert(f"t{n}", meta={"category": "tvs", "brand": "acme"}, ts_ms=0)
        rep.record_trend(rep.row(f"t{n}"), 100.0, 1000)
    user = UserState.new("u", CFG.dim, CFG.seed).replace(history=(("p8", 2000, 1.0, "view"),))
    f = user_features(user, rep, CFG, now_ms=3000)
    brand = {rep.ids[r]: float(v[BRAND_TREND]) for r, v in zip(f.rows.tolist(), f.values,
                                                                strict=True) if v[BRAND_TREND]}
    # All 40 acme phones by trend (the user's own p8 among them), no TV: another shelf.
    assert sorted(brand, key=brand.__getitem__, reverse=True) == [
        f"p{n}" for n in range(156, -1, -4)]
    assert brand["p156"] == 1.0 and brand["p152"] == 0.5
    # p4 is below the shelf's 100 trending phones: a candidate through its brand alone.
    p4 = f.values[f.rows.tolist().index(rep.row("p4"))]
    assert p4[CATEGORY_TREND] == 0 and p4[BRAND_TREND] > 0
    # p120 is among them (and past the 16 never-learned phones new_in_category names
    # first): the shelf's reason comes first.
    rows = np.array([rep.row("p4"), rep.row("p120")])
    assert explain(user, rep, rows, f) == ["popular acme in phones", "trending in phones"]


def test_no_brand_trend_where_the_latest_item_has_no_brand() -> None:
    from online_models.blend import BRAND_TREND, user_features

    rep = ItemReplica(CFG)
    for n in range(10):
        rep.upsert(f"p{n}", meta={"category": "phones", "brand": "acme" if n else None},
                   ts_ms=0)
    user = UserState.new("u", CFG.dim, CFG.seed).replace(history=(("p0", 2000, 1.0, "view"),))
    f = user_features(user, rep, CFG, now_ms=3000)
    assert f.rows.shape[0] == 10 and not f.values[:, BRAND_TREND].any()


def _selection_shop() -> tuple[ModelConfig, ItemReplica, UserState, object]:
    """A user whose taken items (rows 302-309) the factorisation likes, below two rows it
    likes more (300-301) and above 30 co-visited rows (0-29) and the rest of the catalogue."""
    from online_models.blend import COVISIT, UserFeatures
    from online_models.scoring import query_vector

    cfg = CFG.replace(top_k=5)
    rep = ItemReplica(cfg)
    for n in range(400):
        rep.ensure(f"i{n}")
    user = UserState.new("u", cfg.dim, 0)
    q = query_vector(user, rep, cfg)
    u = q / np.linalg.norm(q)
    vectors = rep.table._data
    vectors[:] = -u
    vectors[:30] = -0.1 * u
    vectors[300:302] = 2 * u
    vectors[302:310] = u
    values = np.zeros((30, len(FEATURES)), dtype=np.float32)
    values[:, COVISIT] = 1.0
    return cfg, rep, user, UserFeatures(np.arange(30), values, np.full(30, -1), [])


@pytest.mark.parametrize("stuck", ["ranked", "sampled", None])
def test_the_selection_serves_the_blend_that_lists_more_of_the_taken_items(
        stuck: str | None) -> None:
    # Each blend is tested on every step with its own ranking; a blend that cannot learn
    # and lists only the co-visited rows (which are never taken) falls behind the other.
    from online_models.blend import COVISIT, MODEL, BlendSelection
    from online_models.scoring import blend_step

    cfg, rep, user, feats = _selection_shop()
    selection = BlendSelection.initial(cfg)
    if stuck is not None:
        blend = getattr(selection, stuck)
        blend.learning_rate = 0.0
        blend.weights[COVISIT] = 50.0
    for target in np.random.default_rng(5).integers(302, 310, size=300):
        blend_step(selection, user, rep, cfg, feats, int(target))  # type: ignore[arg-type]
    serving = {"ranked": selection.sampled, "sampled": selection.ranked}.get(stuck or "")
    if serving is not None:
        assert selection.active is serving and selection.weights is serving.weights
        assert abs(selection.lead) > 5
    else:  # both learn that the factorisation, not co-visitation, predicts the taken items
        for blend in (selection.ranked, selection.sampled):
            assert blend.weights[MODEL] > 0.3 and (blend.bonus(feats, 1.0) < 0).all()
        assert selection.ranked.weights[COVISIT] < 0
        # the drawn rows make the sampled blend's steps differ
        assert not np.array_equal(selection.ranked.weights, selection.sampled.weights)
