"""Cold items from their text: words, the ridge map, the packaged encoder, the model's use."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from flink_jobs.bundles import (
    GRADIENT_MESSAGE,
    ITEM_EMBEDDINGS,
    UPSERT_MESSAGE,
    decode_output_bundle,
)
from flink_jobs.item_side import ItemSide
from freshrec.generator import Storefront, category_words
from online_models.config import ModelConfig
from online_models.item_gradients import ItemGradients
from online_models.item_state import ItemState
from online_models.learning import apply_item_embedding
from online_models.model import FreshRecModel
from online_models.replica import ItemReplica
from online_models.text import (
    TEXT_DIM,
    ColdText,
    TextMap,
    item_text,
    load_text_encoder,
    warm_milestone,
)
from schemas.events import Event, decode_event, encode_event
from schemas.item_embedding import ItemEmbedding


def test_item_text_keeps_words_and_drops_numeric_ids() -> None:
    assert item_text("Galaxy S21", "A phone.", "electronics.smartphone", "samsung") == (
        "Galaxy S21 A phone electronics smartphone samsung")
    assert item_text(category="2053013555631882655",
                     context={"category_code": "appliances.kitchen.washer"}) == (
        "appliances kitchen washer")
    assert item_text() == ""


def test_milestones_double_from_the_first() -> None:
    assert [n for n in range(60) if warm_milestone(n, n + 1)] == [2, 5, 11, 23, 47]
    assert warm_milestone(0, 7)        # a burst that jumps over 3 and 6 still counts once
    assert not warm_milestone(7, 11)


def test_ridge_map_recovers_a_linear_map_and_round_trips() -> None:
    rng = np.random.default_rng(0)
    W = rng.normal(size=(8, 4))
    m = TextMap(8, 4, l2=1e-3, forget=1.0)
    for _ in range(5):
        T = rng.normal(size=(50, 8)).astype(np.float32)
        m.learn(T, (T @ W).astype(np.float32))
    probe = rng.normal(size=(3, 8)).astype(np.float32)
    np.testing.assert_allclose(m.predict(probe), probe @ W, atol=1e-3)
    assert m.n == 250
    back = TextMap.from_bytes(m.to_bytes())
    assert back == m
    np.testing.assert_allclose(back.predict(probe), m.predict(probe))
    with pytest.raises(ValueError, match="bad magic"):
        TextMap.from_bytes(b"XXX" + m.to_bytes()[3:])


def test_unknown_encoder_is_refused_and_empty_is_off() -> None:
    with pytest.raises(ValueError, match="text_encoder"):
        load_text_encoder("minilm")
    assert load_text_encoder("") is None


def test_encoder_missing_package_logs_one_line(monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    import builtins

    real_import = builtins.__import__

    def no_wordllama(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("wordllama"):
            raise ImportError("No module named 'wordllama'")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    load_text_encoder.cache_clear()
    monkeypatch.setattr(builtins, "__import__", no_wordllama)
    try:
        with caplog.at_level(logging.WARNING, logger="online_models.text"):
            assert load_text_encoder("wordllama") is None
            model = FreshRecModel(ModelConfig(dim=8))
        assert model.text is None
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1 and "cold items from text: off" in lines[0]
    finally:
        monkeypatch.undo()
        load_text_encoder.cache_clear()


wordllama = pytest.importorskip("wordllama")


def test_packaged_encoder_loads_offline_and_ranks_meaning() -> None:
    enc = load_text_encoder("wordllama")
    assert enc is not None
    v = enc.encode(["mobile phones", "smartphone", "camping tents", ""])
    assert v.shape == (4, TEXT_DIM) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v[:3], axis=1), 1.0, atol=1e-4)
    assert not v[3].any()
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.3


def test_start_vectors_wait_for_the_map_then_follow_the_words() -> None:
    enc = load_text_encoder("wordllama")
    assert enc is not None
    cold = ColdText(enc, 2, min_examples=4)
    content = np.zeros((2, 2), dtype=np.float32)
    assert cold.start_vectors(["mobile phones", ""], content) == [None, None]
    cold.learn(["mobile phones b1", "mobile phones b2", "camping tents b1", "camping tents b3"],
               np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=np.float32))
    phone, blank = cold.start_vectors(["b7 mobile phones item 9", ""], content)
    assert blank is None and phone is not None
    assert phone[0] > phone[1] + 0.2


def test_model_places_an_untagged_new_item_among_its_words() -> None:
    """An item whose feed has no category starts near the warm items named like it."""
    shop = Storefront(seed=3, n_items=400, n_categories=6, untagged=True)
    model = FreshRecModel(ModelConfig(dim=16, seed=3, text_map_min=30))
    model.learn_many(list(shop.events(12_000)))
    assert model.text is not None and model.text.map.n >= 30
    rep = model.replica
    by_cat: dict[str, list[int]] = {}
    for item, cat in shop.truth.item_category.items():
        if rep.row(item) >= 0 and model._item_positives.get(item, 0) >= 5:
            by_cat.setdefault(cat, []).append(rep.row(item))
    means = {c: rep.table.vectors[r].mean(axis=0) for c, r in by_cat.items() if len(r) >= 5}
    wins = 0
    for n, cat in enumerate(means):
        item = f"new{n}"
        model.learn_one(Event(f"up{n}", "item_upsert", model.now_ms, item_id=item,
                              title=f"b1 {category_words(cat)} item {item}"))
        v = rep.table.vectors[rep.row(item)]
        sims = {c: float(v @ m / np.linalg.norm(m)) for c, m in means.items()}
        wins += max(sims, key=sims.__getitem__) == cat
    assert wins >= len(means) - 1


def test_text_off_keeps_metadata_vectors() -> None:
    events = list(Storefront(seed=4, n_items=200, untagged=True).events(3000))
    on = FreshRecModel(ModelConfig(dim=8, seed=4, text_map_min=10))
    off = FreshRecModel(ModelConfig(dim=8, seed=4, text_encoder=""))
    on.learn_many(events)
    off.learn_many(events)
    assert off.text is None and not off._item_text
    assert on.text is not None and on.text.map.n > 0


def test_description_is_an_event_field_with_a_length_limit() -> None:
    ev = Event("e1", "item_upsert", 1_700_000_000_000, item_id="i1", title="Trail shoe",
               description="Light running shoe for rocky trails.")
    assert decode_event(encode_event(ev)) == ev
    long = encode_event(Event("e2", "item_upsert", 1_700_000_000_000, item_id="i1",
                              description="x" * 4097))
    err = decode_event(long)
    assert getattr(err, "field", None) == "$.description"


def _seeded_map(dim: int) -> bytes:
    enc = load_text_encoder("wordllama")
    assert enc is not None
    cold = ColdText(enc, dim, min_examples=4)
    target = np.zeros((4, dim), dtype=np.float32)
    target[:2, 0] = 1.0
    target[2:, 1] = 1.0
    cold.learn(["mobile phones b1", "mobile phones b2", "camping tents b1", "camping tents b3"],
               target)
    return cold.map.to_bytes()


def test_item_side_starts_upserted_items_from_text_and_replicas_keep_it() -> None:
    cfg = ModelConfig(dim=8, seed=1, text_map_min=4)
    side = ItemSide(cfg, 200, 5000)
    upsert = UPSERT_MESSAGE + encode_event(Event(
        "u1", "item_upsert", 1_700_000_000_000, item_id="new-phone",
        title="b7 mobile phones item 9", description="A phone with a large screen."))
    cold = side.process([upsert], lambda ids: {}, lambda e: False, 1_000)
    plain = ItemState.from_bytes(side.process([upsert], lambda ids: {}, lambda e: False, 1_000,
                                              None).writes["new-phone"]).vector
    placed = ItemState.from_bytes(side.process([upsert], lambda ids: {}, lambda e: False, 1_000,
                                               _seeded_map(8)).writes["new-phone"]).vector
    np.testing.assert_array_equal(
        ItemState.from_bytes(cold.writes["new-phone"]).vector, plain)  # no map yet: content
    moved = placed - plain
    assert moved[0] > moved[1] + 0.2 and cold.text_map is None
    out, n = side.publish(["new-phone"], {"new-phone": ItemState(
        "new-phone", placed, title="b7 mobile phones item 9").to_bytes()})
    assert n == 1
    emb = ItemEmbedding.from_bytes(decode_output_bundle(out.to_bytes())[ITEM_EMBEDDINGS][0][1])
    replica = ItemReplica(cfg)
    row = apply_item_embedding(replica, emb)
    np.testing.assert_allclose(replica.table.vectors[row], placed, rtol=1e-6)


def test_item_side_teaches_the_map_at_warm_milestones() -> None:
    cfg = ModelConfig(dim=8, seed=1)
    side = ItemSide(cfg, 200, 5000)

    def grads(n_positive: int) -> bytes:
        return GRADIENT_MESSAGE + ItemGradients(
            ["i1"], np.full((1, 8), 0.1, dtype=np.float32), np.zeros(1, np.float32),
            np.ones(1), np.array([n_positive], np.int32), np.array([5], np.int64),
            [{"category": "garden.hoses", "brand": "acme", "price": None}]).to_bytes()

    store: dict[str, bytes] = {}
    first = side.process([grads(2)], lambda ids: {i: store.get(i) for i in ids},
                         lambda e: False, 1_000)
    store.update(first.writes)
    assert first.text_map is None  # 2 interactions: below the first milestone
    second = side.process([grads(1)], lambda ids: {i: store.get(i) for i in ids},
                          lambda e: False, 2_000)
    assert second.text_map is not None and TextMap.from_bytes(second.text_map).n == 1
