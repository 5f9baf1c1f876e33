"""Reasons for recommended items, in the words a shopper reads ("you viewed this recently",
"often viewed with <item>", "new in <category>", "trending in <category>", "popular
<brand> in <category>").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from online_models.arrays import positions
from online_models.blend import (
    BRAND_TREND,
    CATEGORY_TREND,
    COLD,
    COVISIT,
    COVISIT_LAST,
    NEW_IN_CATEGORY,
    RECENT_POSITION,
    SIMILAR_NEW,
    UserFeatures,
)
from online_models.config import ModelConfig
from online_models.learning import context_rows
from online_models.replica import ItemReplica
from online_models.state import UserState

_VERBS = {
    "view": "viewed", "click": "viewed", "favorite": "saved", "add_to_cart": "added to cart",
    "purchase": "bought",
}
_CTX_ALL = ModelConfig(context_len=5)


# What a listed row's reason comes from: the first of these its features have.
_DENSE, _RECENT, _COLD, _NEW, _SOURCE, _TREND, _BRAND = range(7)


def explain(user: UserState, replica: ItemReplica, rows: np.ndarray,
            features: UserFeatures) -> list[str]:
    """A human-readable reason per recommended row."""
    return explain_many([user], replica, [rows], [features])[0]


def explain_many(users: Sequence[UserState], replica: ItemReplica, rows: Sequence[np.ndarray],
                 features: Sequence[UserFeatures]) -> list[list[str]]:
    """:func:`explain` of several users' lists (``rows[j]`` for ``users[j]``), the array
    work done once for all of them."""
    if not users:
        return []
    kinds, sources, similar = _reason_kinds(replica, rows, features)
    ids, meta = replica.ids, replica.meta
    out: list[list[str]] = []
    begin = 0
    for user, listed, feats in zip(users, rows, features, strict=True):
        end = begin + listed.shape[0]
        verb_of = {h[0]: _VERBS.get(h[3], "viewed") for h in user.history}
        reasons: list[str] = []  # "": no sparse reason
        for r, kind, s, sim in zip(listed.tolist(), kinds[begin:end], sources[begin:end],
                                   similar[begin:end], strict=True):
            if kind == _RECENT:
                verb = verb_of.get(ids[r], "viewed")
                reasons.append("you added this to your cart" if verb == "added to cart"
                               else f"you {verb} this recently")
            elif kind == _COLD:  # a cold user's list is their cluster's
                reasons.append("popular with shoppers like you")
            elif kind == _NEW:
                category = meta[r].get("category")
                reasons.append(f"new in {category}" if category else "new arrival")
            elif kind == _SOURCE:
                # A cold item near one the user just took, or a co-visited one.
                src = feats.source_ids[s]
                reasons.append(f"similar to {src} you {verb_of.get(src, 'viewed')}" if sim
                               else f"often {verb_of.get(src, 'viewed')} with {src}")
            elif kind == _TREND:
                reasons.append(f"trending in {meta[r].get('category')}")
            elif kind == _BRAND:
                reasons.append(f"popular {meta[r].get('brand')} in {meta[r].get('category')}")
            else:
                reasons.append("")
        rest = [j for j, reason in enumerate(reasons) if not reason]
        if rest:
            _dense_reasons(user, replica, listed[rest], rest, reasons, verb_of)
        out.append(reasons)
        begin = end
    return out


def _reason_kinds(replica: ItemReplica, rows: Sequence[np.ndarray],
                  features: Sequence[UserFeatures]
                  ) -> tuple[list[int], list[int], list[bool]]:
    """Per listed row of every list, in order: the kind of its sparse reason (the first
    feature that applies; ``_DENSE``: none), the place of its co-visitation or similarity
    source among its user's recent items, and whether that source is a similarity."""
    n = len(replica) + 1
    users = np.arange(len(rows))
    listed = np.concatenate(rows)
    # Each listed row's place among all users' feature rows (-1: it has none).
    at = positions(
        np.repeat(users, [u.rows.shape[0] for u in features]) * n
        + np.concatenate([u.rows for u in features]),
        np.repeat(users, [r.shape[0] for r in rows]) * n + listed, len(rows) * n)
    has = at >= 0
    at = np.maximum(at, 0)
    values = np.concatenate([u.values for u in features])
    if not values.shape[0]:
        return [_DENSE] * listed.shape[0], [-1] * listed.shape[0], [False] * listed.shape[0]
    v = values[at]  # the listed rows' features
    source = np.where(has, np.concatenate([u.source for u in features])[at], -1)
    # The first of these that applies gives the kind: assigned from the last to the first,
    # as np.select would choose (which costs ~0.1 ms a call at a list's 20 rows).
    kinds = np.full(listed.shape[0], _DENSE, dtype=np.int64)
    for applies, kind in ((v[:, BRAND_TREND] > 0, _BRAND), (v[:, CATEGORY_TREND] > 0, _TREND),
                          (source >= 0, _SOURCE),
                          (v[:, NEW_IN_CATEGORY] > 0, _NEW), (v[:, COLD] > 0, _COLD),
                          (v[:, RECENT_POSITION] > 0, _RECENT), (~has, _DENSE)):
        kinds[applies] = kind
    similar = (v[:, SIMILAR_NEW] > 0) & (v[:, COVISIT] == 0) & (v[:, COVISIT_LAST] == 0)
    return kinds.tolist(), source.tolist(), similar.tolist()


def _dense_reasons(user: UserState, replica: ItemReplica, rows: np.ndarray, at: list[int],
                   out: list[str], verb_of: dict[str, str]) -> None:
    """Reasons of the rows without a sparse one (``out[at[j]]`` for ``rows[j]``): the
    context item they are most like, or what is trending (only these rows are compared
    with the context: most listed rows have a sparse reason)."""
    V = replica.table.vectors
    ctx_rows, _ = context_rows(user, replica, _CTX_ALL)
    if ctx_rows.size:
        vr = V[rows]
        sims = vr @ V[ctx_rows].T
        best, most_similar = sims.max(axis=1).tolist(), sims.argmax(axis=1).tolist()
        own = np.einsum("ij,ij->i", vr, vr).tolist()
        ctx_ids = [replica.ids[r] for r in ctx_rows.tolist()]
    else:
        best = most_similar = own = []
        ctx_ids = []
    for j, r in enumerate(rows.tolist()):
        category = replica.meta[r].get("category")
        if best and best[j] > 0.5 * own[j]:
            src = ctx_ids[most_similar[j]]
            reason = f"similar to {src} you {verb_of.get(src, 'viewed')}"
        elif category is not None:
            reason = f"trending in {category}"
        else:
            reason = "popular now"
        out[at[j]] = reason
