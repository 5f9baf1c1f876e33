"""``freshrec serve`` without a broker: its settings, similar items through the model core's
exact and approximate retrieval, the store's transactions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from freshrec.serve import check_settings
from freshrec.serve_feed import ServeError
from freshrec.serve_store import Change, Store, StoreError, pack_list
from freshrec_common.settings import SettingsError, load_settings
from online_models.config import ModelConfig
from online_models.learning import apply_item_embedding
from online_models.replica import ItemReplica
from online_models.scoring import similar_items
from schemas.item_embedding import ItemEmbedding
from schemas.recommendation import Recommendation, ScoredItem


def test_auth_token_comes_from_the_environment_only(tmp_path: Path) -> None:
    env = {"FRESHREC_SERVE_AUTH_TOKEN": "s3cret"}
    settings = load_settings(env=env)
    assert settings.serve.auth_token == "s3cret"
    assert "s3cret" not in repr(settings.serve)
    config = tmp_path / "freshrec.toml"
    config.write_text('[serve]\nauth_token = "s3cret"\n')
    with pytest.raises(SettingsError, match=r"serve\.auth_token: set it with the environment "
                                            r"variable FRESHREC_SERVE_AUTH_TOKEN, never in"):
        load_settings(config, env={})
    with pytest.raises(SettingsError, match=r"serve\.auth_token.*never in --set"):
        load_settings(env={}, overrides=["serve.auth_token=s3cret"])


@pytest.mark.parametrize("override", ["serve.port=70000", "serve.port=0",
                                      "serve.store_max_gb=0"])
def test_bad_serve_settings_are_refused_by_name(override: str) -> None:
    with pytest.raises(SettingsError, match=override.split("=")[0].replace(".", r"\.")):
        load_settings(env={}, overrides=[override])


def test_binding_beyond_loopback_needs_a_token() -> None:
    with pytest.raises(ServeError, match=r"serve\.auth_token"):
        check_settings(load_settings(env={}, overrides=["serve.host=0.0.0.0"]))
    open_with_token = load_settings(env={"FRESHREC_SERVE_AUTH_TOKEN": "x" * 20},
                                    overrides=["serve.host=0.0.0.0"])
    assert check_settings(open_with_token) is None


def catalogue(n: int, dim: int, seed: int = 0) -> list[ItemEmbedding]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim)) * 2
    return [ItemEmbedding(f"i{j}", tuple((centres[j % 20] + 0.3 * rng.standard_normal(dim))
                                         .tolist()), 0.0, None, 2, 0) for j in range(n)]


def test_similar_items_use_the_approximate_index_above_ann_min_items() -> None:
    exact_cfg = ModelConfig(dim=16, ann_min_items=0)
    ann_cfg = ModelConfig(dim=16, ann_min_items=100)
    exact, approx = ItemReplica(exact_cfg), ItemReplica(ann_cfg)
    for emb in catalogue(600, 16):
        apply_item_embedding(exact, emb)
        apply_item_embedding(approx, emb)
    overlap = []
    for item in ("i0", "i7", "i333"):
        want = similar_items(exact, item, 10, exact_cfg)
        got = similar_items(approx, item, 10, ann_cfg)
        assert want is not None and got is not None and item not in dict(got)
        overlap.append(len(set(dict(want)) & set(dict(got))) / 10)
        # Candidates are rescored exactly: an item found by both has the same score.
        for other, score in got:
            if other in dict(want):
                assert score == pytest.approx(dict(want)[other], abs=1e-5)
    assert approx.ann is not None and exact.ann is None  # the index really served
    assert min(overlap) >= 0.8, overlap


def test_unavailable_items_are_never_similar() -> None:
    cfg = ModelConfig(dim=8)
    rep = ItemReplica(cfg)
    for emb in catalogue(30, 8):
        apply_item_embedding(rep, emb)
    first = similar_items(rep, "i0", 3, cfg)
    assert first is not None
    gone = first[0][0]
    rep.upsert(gone, meta={"available": False})
    again = similar_items(rep, "i0", 3, cfg)
    assert again is not None and gone not in dict(again)


def test_store_refuses_other_topics_and_keeps_offsets_with_data(tmp_path: Path) -> None:
    store = Store(tmp_path, 2**24, "recs", "items")
    rec = Recommendation("u1", (ScoredItem("i1", 1.0, "r"),), "m", 5, 4, "e", 2)
    store.commit([Change("recs", b"u1", pack_list(rec, rec.to_bytes()))], {("recs", 1): 8})
    # A failed transaction writes neither data nor offsets.
    with pytest.raises(RuntimeError), store.env.begin(write=True) as txn:
        txn.put(b"u2", b"x", db=store._recs)
        raise RuntimeError("crash mid-batch")
    store.close()
    again = Store(tmp_path, 2**24, "recs", "items")
    assert again.offsets() == {("recs", 1): 8} and len(again) == 1
    assert again.get_list("u1") is not None and again.get_list("u2") is None
    with pytest.raises(StoreError, match="in use by another process"):
        Store(tmp_path, 2**24, "recs", "items")
    again.close()
    with pytest.raises(StoreError, match=r"serve\.store_dir .* holds a store of"):
        Store(tmp_path, 2**24, "other-recs", "items")
    Store(tmp_path, 2**24, "recs", "items").close()  # a refusal leaves the store unlocked
