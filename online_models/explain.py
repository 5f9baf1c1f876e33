"""Reasons for recommended items, in the words a shopper reads ("you viewed this recently",
"often viewed with <item>", "new in <category>", "trending in <category>").
"""

from __future__ import annotations

import numpy as np

from online_models.blend import (
    CATEGORY_TREND,
    COLD,
    COVISIT,
    COVISIT_LAST,
    NEW_IN_CATEGORY,
    RECENT_POSITION,
    SIMILAR_NEW,
    UserFeatures,
    row_positions,
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


def explain(user: UserState, replica: ItemReplica, rows: np.ndarray,
            features: UserFeatures, trending: frozenset[int] = frozenset()) -> list[str]:
    """A human-readable reason per recommended row."""
    at = row_positions(features.rows, rows)
    f_at = at.tolist()
    # Only the listed rows' features (a user has hundreds of feature rows, a list ~20);
    # a row without features (at -1) reads row 0 and is never looked at.
    values = features.values
    f = (values[np.maximum(at, 0)] if values.shape[0]
         else np.zeros((rows.shape[0], values.shape[1]), dtype=values.dtype))
    verb_of = {h[0]: _VERBS.get(h[3], "viewed") for h in user.history}
    rows_l = rows.tolist()
    ids = replica.ids
    frows = f.tolist()
    out: list[str] = []  # "": no sparse reason yet
    for j, r in enumerate(rows_l):
        fj = f_at[j]
        reason = ""
        if fj >= 0:  # the row has sparse features: the first that applies says why
            fr = frows[j]
            if fr[RECENT_POSITION] > 0:
                verb = verb_of.get(ids[r], "viewed")
                reason = ("you added this to your cart" if verb == "added to cart"
                          else f"you {verb} this recently")
            elif fr[COLD] > 0:  # a cold user's list is their cluster's
                reason = "popular with shoppers like you"
            elif fr[NEW_IN_CATEGORY] > 0:
                category = replica.meta[r].get("category")
                reason = f"new in {category}" if category else "new arrival"
            else:
                src = features.source_of(fj)
                if src is not None:
                    # A cold item near one the user just took, or a co-visited one.
                    reason = (f"similar to {src} you {verb_of.get(src, 'viewed')}"
                              if fr[SIMILAR_NEW] > 0 and fr[COVISIT] == 0
                              and fr[COVISIT_LAST] == 0
                              else f"often {verb_of.get(src, 'viewed')} with {src}")
                elif fr[CATEGORY_TREND] > 0:
                    reason = f"trending in {replica.meta[r].get('category')}"
        out.append(reason)
    rest = [j for j, reason in enumerate(out) if not reason]
    if rest:
        _dense_reasons(user, replica, rows[rest], rest, out, verb_of, trending)
    return out


def _dense_reasons(user: UserState, replica: ItemReplica, rows: np.ndarray, at: list[int],
                   out: list[str], verb_of: dict[str, str],
                   trending: frozenset[int]) -> None:
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
        elif r in trending or (not best and category is None):
            reason = f"trending in {category}" if category else "popular now"
        elif category is not None:
            reason = f"trending in {category}"
        else:
            reason = "popular now"
        out[at[j]] = reason
