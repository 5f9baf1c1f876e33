"""Synthetic storefront: determinism, validity, funnel, arrivals, drift and speed."""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from itertools import pairwise

from freshrec.generator import Storefront, generate_events, new_run_id
from schemas.events import EVENT_TYPES, Event, decode_event, encode_event, validate_event


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    a = list(generate_events(3000, seed=11))
    assert a == list(generate_events(3000, seed=11))
    assert a != list(generate_events(3000, seed=12))


def test_run_ids_keep_the_stream_and_change_every_event_id() -> None:
    runs = [list(generate_events(3000, seed=11, run_id=run)) for run in ("", new_run_id(),
                                                                          new_run_id())]
    ids = [{e.event_id for e in run} for run in runs]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    without_ids = [[dataclasses.replace(e, event_id="") for e in run] for run in runs]
    assert without_ids[0] == without_ids[1] == without_ids[2]


def test_stream_can_be_continued() -> None:
    shop = Storefront(seed=5)
    first = list(shop.events(1000)) + list(shop.events(1000))
    assert first == list(Storefront(seed=5).events(2000))


def test_every_event_is_valid_v1_and_round_trips() -> None:
    events = list(generate_events(20_000, seed=2))
    assert len(events) == 20_000
    for ev in events:
        assert validate_event(ev.to_json()) == ev
        assert decode_event(encode_event(ev)) == ev
    assert len({e.event_id for e in events}) == len(events)
    assert all(a.ts_ms <= b.ts_ms for a, b in pairwise(events))
    assert set(Counter(e.event_type for e in events)) == set(EVENT_TYPES) - {"forget_user"}


def test_start_ts() -> None:
    ev = next(iter(generate_events(1, seed=1, start_ts_ms=1_600_000_000_000)))
    assert 1_600_000_000_000 <= ev.ts_ms < 1_600_000_100_000


def test_items_are_announced_before_use_with_true_metadata() -> None:
    shop = Storefront(seed=3, n_items=500)
    announced: dict[str, Event] = {}
    for ev in shop.events(20_000):
        if ev.event_type == "item_upsert":
            announced.setdefault(ev.item_id, ev)  # type: ignore[arg-type]
        else:
            assert ev.item_id in announced
    t = shop.truth
    for item, ev in announced.items():
        assert (ev.category, ev.brand, ev.price) == (
            t.item_category[item], t.item_brand[item], t.item_price[item])


def test_funnel_order_within_sessions() -> None:
    # A purchase follows an add_to_cart of the same item in the same session; a cart add
    # or favorite follows a view/click of it.
    seen: dict[str, set[str]] = defaultdict(set)
    carted: dict[str, set[str]] = defaultdict(set)
    counts: Counter[str] = Counter()
    for ev in generate_events(30_000, seed=4):
        counts[ev.event_type] += 1
        s, i = ev.session_id, ev.item_id
        if ev.event_type in ("view", "click"):
            seen[s].add(i)  # type: ignore[index,arg-type]
        elif ev.event_type in ("add_to_cart", "favorite"):
            assert i in seen[s]  # type: ignore[index]
            if ev.event_type == "add_to_cart":
                carted[s].add(i)  # type: ignore[index,arg-type]
        elif ev.event_type in ("purchase", "remove_from_cart"):
            assert i in carted[s]  # type: ignore[index]
    assert counts["view"] > counts["add_to_cart"] > counts["purchase"] > 0


def test_popularity_is_skewed() -> None:
    views = Counter(e.item_id for e in generate_events(50_000, seed=6) if e.event_type == "view")
    top = sum(n for _, n in views.most_common(len(views) // 10))
    assert top / sum(views.values()) > 0.4  # top 10% of items take a large share


def test_users_follow_their_cluster_tastes() -> None:
    shop = Storefront(seed=8, n_categories=20, taste_strength=0.85)
    t = shop.truth
    hits = total = 0
    for ev in shop.events(30_000):
        if ev.event_type == "view":
            cats = t.cluster_categories(t.user_cluster[ev.user_id])  # type: ignore[index]
            hits += t.item_category[ev.item_id] in cats  # type: ignore[index]
            total += 1
    assert hits / total > 0.8  # 20 categories: chance would be ~0.15


def test_drift_shifts_tastes_at_the_given_point() -> None:
    shop = Storefront(seed=9, drift_at=20_000)
    t = shop.truth
    before = after = 0
    n_before = n_after = 0
    for idx, ev in enumerate(shop.events(40_000)):
        if ev.event_type != "view":
            continue
        old = t.item_category[ev.item_id] in t.cluster_categories(t.user_cluster[ev.user_id])  # type: ignore[index]
        if idx < 20_000:
            before += old
            n_before += 1
        elif idx > 20_100:  # after the sessions open at the drift moved on
            after += old
            n_after += 1
    assert t.drift_event_index is not None and t.drift_event_index >= 20_000
    assert t.drift_ts_ms is not None
    assert before / n_before > 0.8 and after / n_after < 0.3


def test_new_items_and_users_arrive() -> None:
    shop = Storefront(seed=10, n_users=100, n_items=300, new_item_rate=0.01, new_user_rate=0.2)
    events = list(shop.events(20_000))
    new_items = [e for e in events if e.event_type == "item_upsert" and e.context]
    assert len(new_items) > 100
    assert len(shop.truth.item_category) == 300 + len(new_items)
    users = {e.user_id for e in events if e.user_id}
    assert any(int(u[1:]) >= 100 for u in users)  # u100+ arrived later
    assert len(shop.truth.user_cluster) > 100

