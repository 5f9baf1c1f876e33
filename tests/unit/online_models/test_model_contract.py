"""Contract tests every model passes, plus state round trips and job/replay equivalence."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from freshrec.generator import Storefront, generate_events
from online_models import (
    FreshRecModel,
    ItemReplica,
    ItemRows,
    ItemState,
    ModelConfig,
    UserState,
    apply_gradients_to_items,
    learn_bundle,
    lr_schedule,
    make_model,
    new_item_state,
)
from online_models.replay_models import MODEL_NAMES
from schemas.events import Event

CFG = ModelConfig(dim=16, seed=3, exploration=0.0)


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return list(generate_events(2000, seed=11, n_users=80, n_items=300, n_categories=6))


def _user_at(events: list[Event], n: int) -> str:
    """The user of the last interaction at or before index ``n``."""
    return next(e.user_id for e in reversed(events[: n + 1]) if e.user_id is not None)


def _fresh(name: str, events: list[Event], cfg: ModelConfig = CFG) -> object:
    model = make_model(name, cfg)
    for ev in events:
        model.learn_one(ev)  # type: ignore[attr-defined]
    return model


_CACHE: dict[tuple[str, int, ModelConfig], object] = {}


def _trained(name: str, events: list[Event], cfg: ModelConfig = CFG) -> object:
    """A trained model shared by read-only tests (do not mutate it)."""
    key = (name, len(events), cfg)
    if key not in _CACHE:
        _CACHE[key] = _fresh(name, events, cfg)
    return _CACHE[key]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_recommends_k_distinct_known_items_without_nan(name: str, events: list[Event]) -> None:
    model = _trained(name, events)
    users = sorted({e.user_id for e in events if e.user_id})[:10]
    known = {e.item_id for e in events if e.item_id}
    for u in users:
        recs = model.recommend(u, k=15)  # type: ignore[attr-defined]
        ids = [r.item_id for r in recs]
        assert len(ids) == 15 and len(set(ids)) == 15
        assert set(ids) <= known
        assert all(math.isfinite(r.score) for r in recs)
        assert all(isinstance(r.reason, str) and r.reason for r in recs)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_respects_exclusions_and_purchases(name: str, events: list[Event]) -> None:
    model = _trained(name, events)
    buyer = next(e.user_id for e in events if e.event_type == "purchase")
    bought = {e.item_id for e in events if e.user_id == buyer and e.event_type == "purchase"}
    first = [r.item_id for r in model.recommend(buyer, k=10)]  # type: ignore[attr-defined]
    assert not set(first) & bought
    again = [r.item_id for r in model.recommend(buyer, k=10, exclude=first[:5])]  # type: ignore[attr-defined]
    assert not set(again) & set(first[:5])
    assert len(again) == 10


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_deterministic_under_seed(name: str, events: list[Event]) -> None:
    a = _trained(name, events[:1000])
    b = _fresh(name, events[:1000])
    u = _user_at(events, 900)
    assert [r.item_id for r in a.recommend(u, k=10)] == [  # type: ignore[attr-defined]
        r.item_id for r in b.recommend(u, k=10)]  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_unseen_users_and_items(name: str, events: list[Event]) -> None:
    model = _fresh(name, events[:500])
    assert len(model.recommend("never-seen-user", k=5)) == 5  # type: ignore[attr-defined]
    model.learn_one(Event("x1", "add_to_cart", events[499].ts_ms + 1, user_id="brand-new",  # type: ignore[attr-defined]
                          item_id="brand-new-item", category="c1"))
    recs = model.recommend("brand-new", k=5)  # type: ignore[attr-defined]
    assert len(recs) == 5 and all(math.isfinite(r.score) for r in recs)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_learning_changes_the_list(name: str, events: list[Event]) -> None:
    model = make_model(name, CFG)
    for ev in events[:300]:
        model.learn_one(ev)  # type: ignore[attr-defined]
    u = _user_at(events, 299)
    before = [r.item_id for r in model.recommend(u, k=10)]  # type: ignore[attr-defined]
    for ev in events[300:1200]:
        model.learn_one(ev)  # type: ignore[attr-defined]
    after = [r.item_id for r in model.recommend(u, k=10)]  # type: ignore[attr-defined]
    assert before != after


def test_learn_many_matches_the_interface(events: list[Event]) -> None:
    model = FreshRecModel(CFG)
    for i in range(0, 1500, 256):
        model.learn_many(events[i:i + 256])
    assert model.n_items > 100
    assert np.isfinite(model.replica.vectors).all()
    u = _user_at(events, 1499)
    assert len({r.item_id for r in model.recommend(u, k=10)}) == 10
    many = model.recommend_many([u, "nobody"], k=10)
    assert [len(x) for x in many] == [10, 10]


def test_recommend_many_agrees_with_recommend(events: list[Event]) -> None:
    model = _trained("freshrec", events, CFG.replace(cold_events=1))
    users = sorted({e.user_id for e in events if e.user_id})[:20]
    batch = model.recommend_many(users, k=10)  # type: ignore[attr-defined]
    for u, lst in zip(users, batch, strict=True):
        single = model.recommend(u, k=10)  # type: ignore[attr-defined]
        assert [r.item_id for r in lst][:5] == [r.item_id for r in single][:5]
        # The same scale too: the batch path once took the sample std (n - 1) of the dense
        # scores where the single path takes the population std, and near-ties flipped.
        assert [r.score for r in lst][:5] == pytest.approx([r.score for r in single][:5],
                                                           rel=1e-5)


def test_score_items_after_a_list_reuses_its_features_only_until_the_model_learns(
        events: list[Event]) -> None:
    model = _fresh("freshrec", events[:1500])
    user = _user_at(events, 1499)
    items = sorted({e.item_id for e in events[:1500] if e.item_id})[:50]
    model.recommend(user)  # type: ignore[attr-defined]
    after_list = model.score_items(user, items)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(after_list, model.score_items(user, items))  # type: ignore[attr-defined]
    # Others' events at the same time: the user's state and "now" stay, the items move.
    now = model.now_ms  # type: ignore[attr-defined]
    others = [dataclasses.replace(e, ts_ms=now) for e in events[1500:1700]
              if e.user_id not in (None, user) and e.item_id in items]
    model.recommend(user)  # type: ignore[attr-defined]
    model.learn_many(others)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(model.score_items(user, items),  # type: ignore[attr-defined]
                                  model.score_items(user, items))  # type: ignore[attr-defined]


def test_a_test_list_its_auc_and_its_blend_step_share_one_scan(
        events: list[Event], monkeypatch: pytest.MonkeyPatch) -> None:
    """The replay's order (list, sampled AUC, learning with a blend step) scans the
    catalogue once per event, and every figure and blend weight equals a model that scans
    for each of them (ranking writes its scores in place: a shared scan must not change)."""
    from online_models.scoring import dense_scores

    shared, scanning = FreshRecModel(CFG), FreshRecModel(CFG)
    monkeypatch.setattr(scanning, "_dense_scores",
                        lambda user: dense_scores(user, scanning.replica, CFG))
    scans = 0
    scores = shared.replica.scores

    def counted(query: np.ndarray) -> np.ndarray:
        nonlocal scans
        scans += 1
        return scores(query)

    monkeypatch.setattr(shared.replica, "scores", counted)
    tests, items = 0, sorted({e.item_id for e in events if e.item_id})[:30]
    for ev in events[:1200]:
        if ev.user_id in shared.users and ev.item_id is not None:
            tests += 1
            assert shared.recommend(ev.user_id) == scanning.recommend(ev.user_id)
            np.testing.assert_array_equal(shared.score_items(ev.user_id, items),
                                          scanning.score_items(ev.user_id, items))
        shared.learn_one(ev)
        scanning.learn_one(ev)
    assert tests > 500 and scans == tests
    np.testing.assert_array_equal(shared.blend.weights, scanning.blend.weights)


def test_user_state_round_trip_after_learning(events: list[Event]) -> None:
    model = _trained("freshrec", events[:800])
    for state in list(model.users.values())[:20]:  # type: ignore[attr-defined]
        again = UserState.from_bytes(state.to_bytes())
        assert again == state
        assert again.history and again.n_events == state.n_events
    with pytest.raises(ValueError, match="magic"):
        UserState.from_bytes(b"nope")


def test_item_state_round_trip_and_update() -> None:
    it = new_item_state("i9", CFG, {"category": "shoes", "brand": "acme", "price": 12.5})
    assert ItemState.from_bytes(it.to_bytes()) == it
    assert it.category == "shoes" and it.price == 12.5
    changed = it.replace(available=False, title="Red shoe ✓")
    assert ItemState.from_bytes(changed.to_bytes()) == changed != it


@pytest.mark.parametrize("title", ["Red shoe ✓", "nul\x00title", None])
def test_item_rows_write_what_item_state_writes(title: str | None) -> None:
    """ItemRows (the item owner's columns) give the bytes ItemState gives, in every layout
    (a NUL in the metadata keeps version 1), after number and neighbour changes."""
    base = new_item_state("i9", CFG, {"category": "shoes", "price": 12.5}).replace(title=title)
    with_nb = base.replace(neighbours=(("i2", 3.0), ("i1", 0.5)))
    bare = new_item_state("i8", CFG)
    rows = ItemRows([base.to_bytes(), with_nb.replace(item_id="i7").to_bytes(),
                     bare.to_bytes()])
    assert [rows.blob(j) for j in range(3)] == [
        base.to_bytes(), with_nb.replace(item_id="i7").to_bytes(), bare.to_bytes()]
    assert list(rows.neighbours(1).items()) == list(with_nb.neighbours)
    assert rows.neighbours(0) == {}
    rows.n_events[0] += 2
    rows.vectors[0] += 1.0
    rows.set_neighbours(0, {"x": 1.5})
    rows.set_neighbours(1, {})
    expected = base.replace(n_events=2, vector=base.vector + 1.0, neighbours=(("x", 1.5),))
    assert rows.state(0) == expected and rows.blobs()["i9"] == expected.to_bytes()
    assert rows.state(1) == with_nb.replace(item_id="i7", neighbours=())
    assert rows.lacks(2, {"brand": "b"}) and not rows.lacks(0, {"category": "c"})
    with pytest.raises(ValueError, match="contains NUL"):
        rows.set_neighbours(2, {"a\x00b": 1.0})
    with pytest.raises(ValueError, match="'i1' has dim 4, the others 16"):
        ItemRows([bare.to_bytes(), ItemState.new("i1", dim=4, seed=0).to_bytes()])


def test_job_split_equals_in_memory_model(events: list[Event]) -> None:
    """The job's split (learn_bundle on the user side, apply_gradients_to_items on the item
    owner's states, the changelog back into the replica) == FreshRecModel.learn_one."""
    cfg = CFG.replace(cold_events=0)
    model = FreshRecModel(cfg)
    replica = ItemReplica(cfg)
    users: dict[str, UserState] = {}
    items: dict[str, ItemState] = {}
    for ev in events[:600]:
        scale = lr_schedule(model.step, cfg)
        model.learn_one(ev)
        if ev.event_type == "item_upsert":
            meta = {"category": ev.category, "brand": ev.brand, "price": ev.price,
                    "available": ev.available, "title": ev.title}
            replica.upsert(ev.item_id, meta=meta, ts_ms=ev.ts_ms)  # type: ignore[arg-type]
            continue
        if ev.user_id is None:
            continue
        step = learn_bundle(users, [ev], replica, cfg, scale)
        users.update(step.users)
        known = {}
        for item_id in step.gradients.item_ids:
            r = replica.row(item_id)
            known[item_id] = items.get(item_id) or ItemState(
                item_id, replica.vectors[r].copy(), float(replica.table.accumulators[r]),
                float(replica.bias[r]), float(replica.trend[r]))
        for item_id, state in apply_gradients_to_items(known, step.gradients, cfg).items():
            items[item_id] = state
            replica.upsert(item_id, state.vector, bias=state.bias, acc=state.acc)
    assert replica.ids == model.replica.ids
    np.testing.assert_allclose(replica.vectors, model.replica.vectors, rtol=1e-5, atol=1e-6)
    for uid, u in users.items():
        np.testing.assert_allclose(u.vector, model.users[uid].vector, rtol=1e-5, atol=1e-6)
        assert u.history == model.users[uid].history


def test_bundle_learner_is_pure_and_bundles_match_steps(events: list[Event]) -> None:
    """learn_bundle leaves its inputs alone; a bundle of events of distinct users gives
    each user the same step as learning that user's event alone."""
    replica = ItemReplica(CFG)
    for ev in events[:400]:
        if ev.event_type == "item_upsert":
            replica.upsert(ev.item_id, meta={"category": ev.category}, ts_ms=ev.ts_ms)  # type: ignore[arg-type]
    user = UserState.new("u", CFG.dim, CFG.seed)
    before = user.to_bytes()
    ev = Event("e", "favorite", 5, user_id="u", item_id="i1")
    step = learn_bundle({"u": user}, [ev], replica, CFG)
    assert user.to_bytes() == before and step.users["u"] is not user
    assert not step.users["u"].vector.flags.writeable
    assert step.gradients.item_ids[0] == "i1"
    assert step.gradients.grads.shape == (len(step.gradients), CFG.dim)
    inter = [e for e in events[400:] if e.user_id is not None and e.item_id is not None]
    bundle, seen = [], set()
    for e in inter:
        if e.user_id not in seen and e.item_id in replica:
            bundle.append(e)
            seen.add(e.user_id)
    together = learn_bundle({}, bundle[:30], replica, CFG)
    for e in bundle[:30]:
        alone = learn_bundle({}, [e], replica, CFG)
        np.testing.assert_allclose(together.users[e.user_id].vector,  # type: ignore[index]
                                   alone.users[e.user_id].vector, rtol=1e-5, atol=1e-7)  # type: ignore[index]


def test_negative_feedback_lowers_affinity() -> None:
    cfg = CFG.replace(cold_events=0, recency_boost=0.0, pop_weight=0.0)
    model = FreshRecModel(cfg)
    for i in range(50):
        model.learn_one(Event(f"u{i}", "item_upsert", 0, item_id=f"i{i}", category="c"))
    model.learn_one(Event("a", "add_to_cart", 10, user_id="u", item_id="i7"))
    q = model.replica.vectors[model.replica.row("i7")].copy()
    s_before = float(model.replica.scores(q)[model.replica.row("i7")])
    for n in range(20):
        model.learn_one(Event(f"r{n}", "remove_from_cart", 20 + n, user_id="u", item_id="i7"))
    assert not any(h[0] == "i7" for h in model.users["u"].history)
    s_after = float(model.replica.scores(q)[model.replica.row("i7")])
    assert s_after < s_before


def test_forget_user_and_unavailable_items(events: list[Event]) -> None:
    model = _fresh("freshrec", events[:500])
    u = _user_at(events, 499)
    top = model.recommend(u, k=3)[0].item_id  # type: ignore[attr-defined]
    model.learn_one(Event("x", "item_upsert", events[499].ts_ms, item_id=top,  # type: ignore[attr-defined]
                          available=False))
    assert top not in [r.item_id for r in model.recommend(u, k=20)]  # type: ignore[attr-defined]
    model.learn_one(Event("y", "forget_user", events[499].ts_ms, user_id=u))  # type: ignore[attr-defined]
    assert u not in model.users  # type: ignore[attr-defined]


def test_diversity_cap_limits_categories(events: list[Event]) -> None:
    model = _trained("freshrec", events, CFG.replace(diversity_cap=2))
    u = _user_at(events, len(events) - 1)
    cats = [model.replica.meta[model.replica.row(r.item_id)].get("category")  # type: ignore[attr-defined]
            for r in model.recommend(u, k=10)]  # type: ignore[attr-defined]
    assert max(cats.count(c) for c in set(cats)) <= 2


def test_storefront_fixture_has_truth() -> None:
    shop = Storefront(seed=1, n_users=5, n_items=20, n_categories=2)
    assert list(shop.events(10))


def test_cold_users_get_their_clusters_popular_items_in_both_scoring_paths(
        events: list[Event]) -> None:
    model = _trained("freshrec", events[:1500], CFG.replace(cold_events=3))
    assert any(model.clusters.counts)  # type: ignore[attr-defined]
    first = next(e for e in events[1500:] if e.event_type == "view")
    newbie = Event("n1", "view", first.ts_ms, user_id="newbie", item_id=first.item_id)
    model.learn_one(newbie)
    single = model.recommend("newbie", k=10)  # type: ignore[attr-defined]
    (batch,) = model.recommend_many(["newbie"], k=10)  # type: ignore[attr-defined]
    reason = "popular with shoppers like you"
    assert any(r.reason == reason for r in single), single
    assert {r.item_id for r in batch if r.reason == reason} == \
        {r.item_id for r in single if r.reason == reason}
    # Warm users get no cluster bonus.
    warm = max(model.users.values(), key=lambda u: u.n_events)  # type: ignore[attr-defined]
    assert all(r.reason != reason for r in model.recommend(warm.user_id, k=10))  # type: ignore[attr-defined]


def _user_with_history(ts: list[int], weights: list[float]) -> UserState:
    history = tuple((f"item-{n}", t, w, "view") for n, (t, w) in enumerate(zip(ts, weights,
                                                                             strict=True)))
    return UserState("u", np.ones(16, dtype=np.float32), 0.1, history, frozenset({"p"}),
                     frozenset(), len(history), max(ts))


def test_user_history_takes_nine_bytes_per_entry_when_lossless() -> None:
    compact = _user_with_history([1_700_000_000_000 + 1000 * n for n in range(20)], [1.0] * 20)
    wide = compact.replace(history=tuple((*h[:2], 0.3, *h[3:]) for h in compact.history))
    old = compact.replace(history=((*compact.history[0][:1], compact.last_ts - 2**31,
                                    *compact.history[0][2:]), *compact.history[1:]))
    for state in (compact, wide, old):
        assert UserState.from_bytes(state.to_bytes()) == state
    # 0.3 is not a float32 and an entry 25 days older than the last event does not fit an
    # int32 offset: both keep the 17-byte entries, losing nothing.
    assert len(wide.to_bytes()) - len(compact.to_bytes()) == 8 * 20
    assert len(old.to_bytes()) == len(wide.to_bytes())
    assert compact.to_bytes()[:3] == b"FU3" and wide.to_bytes()[:3] == b"FU2"
