"""The user side's settings, the results of a call and the grid owed refreshes fall due on
(plain data: the operator, :mod:`flink_jobs.user_side` and the benches share them)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from flink_jobs.bundles import OutputBundle
from online_models.config import ModelConfig
from online_models.experiments import Experiment

# Owed refreshes fall due on a grid of this many ticks per refresh interval: one timer then
# scores every user owed at that tick together. Due at each user's own millisecond, a
# steady 1,000 events/s made hundreds of timer calls a second, each scoring a user or two
# at a call's full fixed cost (p99 list latency 2 s).
REFRESH_TICKS = 4


def refresh_due(last_refresh_ms: int, interval_ms: int) -> int:
    """When an owed list falls due: the first tick of the grid at least ``interval_ms``
    after the last refresh (so still at most one list per interval).

    >>> refresh_due(1_030, 200), refresh_due(1_050, 200)
    (1250, 1250)
    """
    tick = max(interval_ms // REFRESH_TICKS, 1)
    return -(-(last_refresh_ms + interval_ms) // tick) * tick


def refresh_timer(due_ms: int, interval_ms: int) -> int:
    """When the timer for lists owed at ``due_ms`` fires: one tick of the grid later. A
    shard's bundle scores every owed list already due, and at a steady load its next bundle
    comes within that tick, so the lists go with it: one Python call, not a timer's too.

    >>> refresh_timer(1_250, 200)
    1300
    """
    return due_ms + max(interval_ms // REFRESH_TICKS, 1)


# Reads the stored values of some users, given as user id -> shard (missing or None:
# nothing stored).
Loader = Callable[[Mapping[str, int]], Mapping[str, bytes | None]]


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class UserSideSettings:
    """The job settings user-update needs."""

    config: ModelConfig
    model_version: str
    events_topic: str
    refresh_interval_ms: int
    dedup_window_s: int
    dedup_max_ids: int
    max_payload_bytes: int
    max_id_length: int
    item_shards: int
    learn_items: bool = True
    experiment: Experiment | None = None


@dataclass
class BundleStats:
    """Counts of one call, for the operator to add to its metrics."""

    consumed: dict[str, int] = field(default_factory=dict)
    invalid: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    duplicates: int = 0
    coalesced: int = 0
    published: int = 0
    cold_start: int = 0
    tombstones: int = 0
    drifts: int = 0
    new_users: int = 0
    scored: int = 0
    event_latency_s: list[float] = field(default_factory=list)
    ingest_latency_s: list[float] = field(default_factory=list)
    # Per experiment variant (variant,): lists published; per (variant, user group): events
    # tested against the list shown before them, hits in that list (Recall@top_k) and in
    # its first 10 (Recall@10).
    variant_lists: Counter[tuple[str, ...]] = field(default_factory=Counter)
    variant_tests: Counter[tuple[str, ...]] = field(default_factory=Counter)
    variant_hits: Counter[tuple[str, ...]] = field(default_factory=Counter)
    variant_hits_at_10: Counter[tuple[str, ...]] = field(default_factory=Counter)


@dataclass
class UserBundleResult:
    """State writes, owed refreshes (user -> due time) and output of one call, and the shard
    of every user they name (a call may hold several shards of one subtask)."""

    writes: dict[str, bytes]
    removes: list[str]
    owed: dict[str, int]
    output: OutputBundle
    stats: BundleStats
    shards: dict[str, int]
