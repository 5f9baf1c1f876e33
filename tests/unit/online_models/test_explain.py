"""Reasons for listed items: sparse features first, then the user's context, then trends."""

from __future__ import annotations

import numpy as np
import pytest

from online_models.blend import FEATURES, RECENT_POSITION, UserFeatures
from online_models.config import ModelConfig
from online_models.explain import explain
from online_models.learning import apply_item_embedding
from online_models.replica import ItemReplica
from online_models.state import UserState
from schemas.item_embedding import ItemEmbedding

pytestmark = pytest.mark.unit

DIM = 4
_A, _B = np.eye(DIM, dtype=np.float32)[0], np.eye(DIM, dtype=np.float32)[1]


def _shop() -> tuple[ItemReplica, UserState]:
    replica = ItemReplica(ModelConfig(dim=DIM, seed=0))
    for item_id, vector, category in (("seen", _A, "shoes"), ("cart", _B, "shoes"),
                                      ("near", _A, "shoes"), ("far", _B - 2 * _A, "books"),
                                      ("plain", -_A, None)):
        apply_item_embedding(replica, ItemEmbedding(
            item_id, tuple(vector.tolist()), 0.0, 0.0, 5, 1_700_000_000_000, acc=1.0,
            category=category))
    user = UserState.new("u1", DIM, 0).replace(
        history=(("seen", 1_000, 1.0, "view"), ("cart", 2_000, 1.0, "add_to_cart")),
        n_events=2, last_ts=2_000)
    return replica, user


def _recent_rows(replica: ItemReplica, ids: list[str]) -> UserFeatures:
    """Features of the user's history rows only (what ``recent_position`` marks)."""
    values = np.zeros((len(ids), len(FEATURES)), dtype=np.float32)
    values[:, RECENT_POSITION] = 1.0
    return UserFeatures(np.array([replica.row(i) for i in ids], dtype=np.int64), values,
                        np.full(len(ids), -1, dtype=np.int64), [])


def test_each_row_gets_the_first_reason_that_applies_in_list_order() -> None:
    replica, user = _shop()
    listed = ["near", "seen", "far", "cart", "plain"]
    rows = np.array([replica.row(i) for i in listed], dtype=np.int64)
    reasons = explain(user, replica, rows, _recent_rows(replica, ["seen", "cart"]))
    assert reasons == [
        "similar to seen you viewed",       # no sparse reason: its vector is the context's
        "you viewed this recently",         # sparse: in the history
        "trending in books",                # unlike every context item
        "you added this to your cart",
        "popular now",                      # unlike the context and without a category
    ]


def test_without_context_the_rows_lacking_sparse_reasons_are_trending() -> None:
    replica, user = _shop()
    cold = user.replace(history=(), n_events=0)
    rows = np.array([replica.row(i) for i in ("near", "plain")], dtype=np.int64)
    assert explain(cold, replica, rows, UserFeatures.empty()) == ["trending in shoes",
                                                                   "popular now"]
