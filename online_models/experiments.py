"""A/B experiments by user bucket: named variants, each with a traffic share and overrides
of the model's query-time and learning settings, users assigned by a keyed hash.

An experiment file is TOML::

    key = "spring-2027"          # hash key: a new key reshuffles every user
    [variants.control]
    share = 0.5
    [variants.recency2]
    share = 0.4
    recency_boost = 2.0
    [variants.trending]
    share = 0.1
    trending_only = true         # the control that shows trending items only

Bucketing: a user's point ``u = blake2b(user_id, key=key) / 2^64`` in ``[0, 1)`` falls in one
variant's range; the ranges are laid out in the file's order, each as long as its share
(shares are normalised to sum to 1). The same user always lands in the same variant, and
changing one boundary moves only the users between the old and the new boundary: raising
``recency2`` from 0.4 to 0.45 (and ``trending`` down to 0.05) moves 5 % of users, all from
``trending`` to ``recency2``. Adding a variant at the end takes its share from the end of
the last range.

>>> exp = Experiment.from_mapping({"key": "k", "variants": {
...     "a": {"share": 0.5}, "b": {"share": 0.5, "recency_boost": 2.0}}})
>>> exp.variant_of("user-1") == exp.variant_of("user-1")
True
>>> counts = {v: 0 for v in exp.names}
>>> for n in range(10_000):
...     counts[exp.variant_of(f"u{n}")] += 1
>>> 4_800 < counts["a"] < 5_200
True
>>> exp.config("b", ModelConfig()).recency_boost
2.0
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from online_models.config import ModelConfig
from online_models.replica import ItemReplica
from online_models.scoring import excluded_items
from online_models.state import UserState
from schemas.recommendation import ScoredItem

# Groups of users per variant in the job's counters: enough for a standard error with the
# group as the unit, few enough to keep the metric series bounded.
USER_GROUPS = 32
# What a variant may change: how lists are scored and how users learn. The item side
# (item vectors, trend, co-visitation) is shared by every variant, so its settings are not
# here; neither are those that change state layouts (dim, history_len).
VARIANT_SETTINGS = frozenset({
    "top_k", "learning_rate", "l2", "negatives", "exclude", "exploration",
    "weight_view", "weight_click", "weight_favorite", "weight_add_to_cart",
    "weight_purchase", "weight_unfavorite", "weight_remove_from_cart", "context_len",
    "context_decay", "user_weight", "recency_boost", "recency_half_life_s",
    "blend_learning_rate", "pop_weight", "cold_events", "cluster_weight", "diversity_cap",
})


class ExperimentError(ValueError):
    """An experiment file is invalid; the message names the variant and key."""


@dataclass(frozen=True, slots=True)
class Variant:
    """One arm: its share of users, its setting overrides, and whether it shows trending
    items only (a control without personalisation)."""

    name: str
    share: float
    overrides: Mapping[str, Any]
    trending_only: bool = False


@dataclass(frozen=True, slots=True)
class Experiment:
    """Variants in file order and the hash key."""

    key: str
    variants: tuple[Variant, ...]

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variants]

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any]) -> Experiment:
        """Build from a parsed experiment file; ``ExperimentError`` names a bad key."""
        unknown = set(doc) - {"key", "variants"}
        if unknown:
            raise ExperimentError(f"unknown key(s) {', '.join(sorted(unknown))}")
        raw = doc.get("variants")
        if not isinstance(raw, Mapping) or not raw:
            raise ExperimentError("variants: at least one [variants.NAME] table is needed")
        variants = []
        for name, table in raw.items():
            if not isinstance(table, Mapping):
                raise ExperimentError(f"variants.{name}: must be a table")
            body = dict(table)
            share = body.pop("share", None)
            if (not isinstance(share, int | float) or isinstance(share, bool)
                    or not 0 < share < math.inf):
                raise ExperimentError(f"variants.{name}.share: must be a number > 0, "
                                      f"got {share!r}")
            trending = body.pop("trending_only", False)
            if not isinstance(trending, bool):
                raise ExperimentError(f"variants.{name}.trending_only: must be true or false")
            for k in body:
                if k not in VARIANT_SETTINGS:
                    raise ExperimentError(
                        f"variants.{name}.{k}: not a setting a variant may change (one of "
                        f"{', '.join(sorted(VARIANT_SETTINGS))})")
            try:
                ModelConfig().replace(**body)
            except (TypeError, ValueError) as exc:
                raise ExperimentError(f"variants.{name}: {exc}") from None
            variants.append(Variant(str(name), float(share), body, trending))
        total = sum(v.share for v in variants)
        variants = [dataclasses.replace(v, share=v.share / total) for v in variants]
        return cls(str(doc.get("key", "")), tuple(variants))

    @classmethod
    def load(cls, path: str | Path) -> Experiment:
        """Read an experiment file (see the module docstring)."""
        try:
            doc = tomllib.loads(Path(path).read_text("utf-8"))
        except FileNotFoundError:
            raise ExperimentError(f"experiment file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ExperimentError(f"experiment file {path} is not valid TOML: {exc}") from None
        return cls.from_mapping(doc)

    def _digest(self, user_id: str) -> int:
        return int.from_bytes(hashlib.blake2b(user_id.encode("utf-8"), digest_size=8,
                                              key=self.key.encode("utf-8")[:64]).digest(), "big")

    def point(self, user_id: str) -> float:
        """The user's stable point in ``[0, 1)`` (keyed BLAKE2b of the id)."""
        return self._digest(user_id) / 2.0**64

    def group_of(self, user_id: str) -> int:
        """The user's group in ``[0, USER_GROUPS)``: the hash's low bits, independent of the
        variant (its high bits). The job counts tests and hits per variant and group, so
        that the live intervals take whole users as the unit (:func:`clustered_rate` over
        groups) without per-user counts."""
        return self._digest(user_id) % USER_GROUPS

    def variant_of(self, user_id: str) -> str:
        """The variant whose range holds the user's point."""
        return self._variant_at(self.point(user_id))

    def _variant_at(self, u: float) -> str:
        edge = 0.0
        for v in self.variants:
            edge += v.share
            if u < edge:
                return v.name
        return self.variants[-1].name  # rounding at the top end

    def cell_of(self, user_id: str) -> tuple[str, str]:
        """The user's variant and group, as the job's live metrics label them (one hash)."""
        digest = self._digest(user_id)
        return self._variant_at(digest / 2.0**64), str(digest % USER_GROUPS)

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    def config(self, name: str, base: ModelConfig) -> ModelConfig:
        """``base`` with the variant's overrides."""
        return base.replace(**self.variant(name).overrides)


def clustered_rate(per_user: Sequence[tuple[int, int]]) -> tuple[float, float]:
    """Hit rate ``sum(hits) / sum(tests)`` over users' ``(tests, hits)`` and its standard
    error with the user as the unit (delta method): a user's tests are not independent, and
    a few heavy users would otherwise make the interval far too narrow.

    >>> rate, se = clustered_rate([(10, 5), (10, 5), (10, 5)])
    >>> rate, se
    (0.5, 0.0)
    """
    n = len(per_user)
    tests = sum(t for t, _ in per_user)
    if n < 2 or tests == 0:
        return (sum(h for _, h in per_user) / tests if tests else 0.0), math.inf
    rate = sum(h for _, h in per_user) / tests
    resid = sum((h - rate * t) ** 2 for t, h in per_user)
    return rate, math.sqrt(n / (n - 1) * resid) / tests


def compare_clustered(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]
                      ) -> tuple[float, float]:
    """Difference of two variants' hit rates (``b - a``) and its two-sided p-value, with
    user-clustered standard errors (:func:`clustered_rate`)."""
    ra, sa = clustered_rate(a)
    rb, sb = clustered_rate(b)
    se = math.hypot(sa, sb)
    if not math.isfinite(se) or se == 0:
        return rb - ra, 1.0
    return rb - ra, math.erfc(abs(rb - ra) / se / math.sqrt(2))


def trending_list(replica: ItemReplica, user: UserState, config: ModelConfig, k: int,
                  exclude: Iterable[str] = ()) -> list[ScoredItem]:
    """The trending-only control's list: the ``k`` most popular items now, less the user's
    exclusions (per ``config.exclude``, and ``exclude``)."""
    skip = excluded_items(user, config, exclude)
    ids = replica.ids
    out = []
    for r in replica.trending_rows(k + len(skip)).tolist():
        if ids[r] not in skip:
            out.append(ScoredItem(ids[r], float(replica.static[r]), "popular now"))
            if len(out) == k:
                break
    return out
