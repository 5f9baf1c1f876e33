"""Reasons for recommended items, in the words a shopper reads ("you viewed this recently",
"often viewed with <item>", "new in <category>", "trending in <category>").
"""

from __future__ import annotations

import numpy as np

from online_models.blend import (
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
    V = replica.table.vectors
    ctx_rows, _ = context_rows(user, replica, _CTX_ALL)
    at = row_positions(features.rows, rows)
    f_at = at.tolist()
    # Only the listed rows' features (a user has hundreds of feature rows, a list ~20);
    # a row without features (at -1) reads row 0 and is never looked at.
    values = features.values
    f = (values[np.maximum(at, 0)] if values.shape[0]
         else np.zeros((rows.shape[0], values.shape[1]), dtype=values.dtype))
    ctx_ids = [replica.ids[r] for r in ctx_rows.tolist()]
    verb_of = {h[0]: _VERBS.get(h[3], "viewed") for h in user.history}
    rows_l = rows.tolist()
    if ctx_rows.size and rows.size:
        vr = V[rows]
        sims = vr @ V[ctx_rows].T
        best, most_similar = sims.max(axis=1).tolist(), sims.argmax(axis=1).tolist()
        own = np.einsum("ij,ij->i", vr, vr).tolist()
    else:
        best = most_similar = own = []
    recent, cold, new, similar, co, co_last = (
        f[:, c].tolist() for c in (RECENT_POSITION, COLD, NEW_IN_CATEGORY, SIMILAR_NEW, COVISIT,
                                   COVISIT_LAST))
    out = []
    for j, r in enumerate(rows_l):
        meta = replica.meta[r]
        category = meta.get("category")
        item_id = replica.ids[r]
        fj = f_at[j]
        src = features.source_of(fj) if fj >= 0 else None
        if fj >= 0 and recent[j] > 0:
            verb = verb_of.get(item_id, "viewed")
            out.append("you added this to your cart" if verb == "added to cart"
                       else f"you {verb} this recently")
        elif fj >= 0 and cold[j] > 0:  # a cold user's list is their cluster's
            out.append("popular with shoppers like you")
        elif fj >= 0 and new[j] > 0:
            out.append(f"new in {category}" if category else "new arrival")
        elif (src is not None and similar[j] > 0 and co[j] == 0
              and co_last[j] == 0):  # a cold item near one the user just took
            out.append(f"similar to {src} you {verb_of.get(src, 'viewed')}")
        elif src is not None:
            out.append(f"often {verb_of.get(src, 'viewed')} with {src}")
        elif best and best[j] > 0.5 * own[j]:
            src = ctx_ids[most_similar[j]]
            out.append(f"similar to {src} you {verb_of.get(src, 'viewed')}")
        elif r in trending or (not best and category is None):
            out.append(f"trending in {category}" if category else "popular now")
        elif category is not None:
            out.append(f"trending in {category}")
        else:
            out.append("popular now")
    return out
