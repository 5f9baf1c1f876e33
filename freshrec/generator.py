"""Synthetic storefront: a seeded, reproducible stream of event v1 records.

The shop has users in taste clusters, a catalogue of items with categories, brands
and prices, and Zipf-distributed item popularity within each category. Users browse in
sessions that follow a funnel (view -> favorite / add_to_cart -> purchase); new items
and new users arrive over time, and at ``drift_at`` every cluster's tastes shift to
other categories. Because the ground truth is known (:class:`Storefront` keeps which
cluster each user is in and which category each item is in), tests and benchmarks can
check that a model recovers it.

Every item is announced by an ``item_upsert`` carrying its metadata right before its
first interaction, so consumers always see metadata before they need it.

>>> events = list(generate_events(5, seed=7))
>>> [e.event_type for e in events][:2]
['item_upsert', 'view']
>>> events == list(generate_events(5, seed=7))
True
>>> shop = Storefront(seed=7, n_users=10, n_items=50, n_categories=4)
>>> evs = list(shop.events(200))
>>> v = next(e for e in evs if e.event_type == "view")
>>> shop.truth.item_category[v.item_id] in {"c0", "c1", "c2", "c3"}
True
"""

from __future__ import annotations

import bisect
import random
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field

from schemas.events import Event

DEFAULT_START_TS_MS = 1_700_000_000_000


@dataclass
class GroundTruth:
    """What the generator knows and a model should recover.

    Attributes
    ----------
    user_cluster : dict[str, int]
        Taste cluster of each user (including users that arrived later).
    item_category, item_brand : dict[str, str]
        Category and brand of each item.
    item_price : dict[str, float]
        Current list price of each item.
    cluster_prefs, cluster_prefs_drifted : list[list[int]]
        Preferred category indices of each cluster before and after the drift.
    drift_event_index, drift_ts_ms : int | None
        Where the drift happened in the stream (``None`` until it has).
    """

    user_cluster: dict[str, int] = field(default_factory=dict)
    item_category: dict[str, str] = field(default_factory=dict)
    item_brand: dict[str, str] = field(default_factory=dict)
    item_price: dict[str, float] = field(default_factory=dict)
    cluster_prefs: list[list[int]] = field(default_factory=list)
    cluster_prefs_drifted: list[list[int]] = field(default_factory=list)
    drift_event_index: int | None = None
    drift_ts_ms: int | None = None

    def cluster_categories(self, cluster: int, drifted: bool = False) -> list[str]:
        """Category labels a cluster prefers, before or after the drift."""
        prefs = self.cluster_prefs_drifted if drifted else self.cluster_prefs
        return [category_label(c) for c in prefs[cluster]]


def category_label(index: int) -> str:
    """The category label of category ``index`` (``'c3'``)."""
    return f"c{index}"


_CATEGORY_WORDS = (
    "running shoes", "mobile phones", "kitchen knives", "board games", "garden hoses",
    "wireless headphones", "winter jackets", "coffee makers", "office chairs", "yoga mats",
    "baby strollers", "dog food", "desk lamps", "electric guitars", "car tyres",
    "wrist watches", "cooking pots", "video games", "bath towels", "camping tents",
)


def category_words(label: str) -> str:
    """The words a title uses for category ``label`` (``'c1'`` -> ``'mobile phones'``;
    past the 20 named ones a number is added).

    >>> category_words("c1"), category_words("c21")
    ('mobile phones', 'mobile phones 1')
    """
    index = int(label[1:])
    words = _CATEGORY_WORDS[index % len(_CATEGORY_WORDS)]
    return words if index < len(_CATEGORY_WORDS) else f"{words} {index // len(_CATEGORY_WORDS)}"


@dataclass
class _Session:
    user: str
    session_id: str
    cluster: int
    steps_left: int
    current: str | None = None
    cart: list[str] = field(default_factory=list)
    favorites: list[str] = field(default_factory=list)


class Storefront:
    """A seeded synthetic shop; :meth:`events` yields its event stream.

    Parameters
    ----------
    seed : int
        Everything random derives from it: same seed and parameters, same stream.
    n_users, n_items, n_categories, n_brands, n_clusters : int
        Initial population sizes (users and items keep arriving when the rates > 0).
    zipf_s : float
        Zipf exponent of item popularity within a category (1.0-1.2 looks like real logs).
    taste_strength : float
        Probability that a view follows the user's cluster preferences rather than
        global popularity.
    drift_at : int | None
        Event index at which each cluster's preferred categories shift; ``None`` = never.
    new_item_rate, new_user_rate : float
        Probability per event of a new item being listed / per session of a new user.
    mean_gap_ms : float
        Mean event-time gap between consecutive events (exponential).
    start_ts_ms : int
        Event time of the first event (epoch ms).
    concurrent_sessions : int
        Sessions interleaved in the stream at any time.
    untagged : bool
        Item upserts carry no ``category``: a catalogue feed whose only description of an
        item is its title (which names its category's words, :func:`category_words`).
    run_id : str
        Put into every event id (``g<seed>-<run_id>-...``) so that two runs with the same
        seed send the same stream under different ids; empty: the ids repeat with the seed.
    """

    def __init__(
        self,
        seed: int = 0,
        n_users: int = 1000,
        n_items: int = 5000,
        n_categories: int = 20,
        n_brands: int = 50,
        n_clusters: int = 8,
        zipf_s: float = 1.1,
        taste_strength: float = 0.85,
        drift_at: int | None = None,
        new_item_rate: float = 0.002,
        new_user_rate: float = 0.05,
        mean_gap_ms: float = 50.0,
        start_ts_ms: int = DEFAULT_START_TS_MS,
        concurrent_sessions: int = 32,
        untagged: bool = False,
        run_id: str = "",
    ) -> None:
        if min(n_users, n_items, n_categories, n_brands, n_clusters) < 1:
            raise ValueError("population sizes must be >= 1")
        self.seed = seed
        self.id_prefix = f"g{seed}-{run_id}-" if run_id else f"g{seed}-"
        self._rng = random.Random(seed)
        self.n_categories = n_categories
        self.n_brands = n_brands
        self.n_clusters = n_clusters
        self.zipf_s = zipf_s
        self.taste_strength = taste_strength
        self.drift_at = drift_at
        self.new_item_rate = new_item_rate
        self.new_user_rate = new_user_rate
        self.mean_gap_ms = mean_gap_ms
        self.concurrent_sessions = concurrent_sessions
        self.untagged = untagged
        self._ts = float(start_ts_ms)
        self.truth = GroundTruth()
        rng = self._rng
        # Each cluster likes 2-3 categories; the drift maps them to other categories.
        per = min(n_categories, 2 + (n_clusters % 2))
        for _ in range(n_clusters):
            self.truth.cluster_prefs.append(rng.sample(range(n_categories), per))
        shift = max(1, n_categories // 2)
        self.truth.cluster_prefs_drifted = [
            [(c + shift) % n_categories for c in prefs] for prefs in self.truth.cluster_prefs
        ]
        # Per category: item ids and cumulative Zipf weights (appendable for new items).
        self._cat_items: list[list[str]] = [[] for _ in range(n_categories)]
        self._cat_cum: list[list[float]] = [[] for _ in range(n_categories)]
        self._all_items: list[str] = []
        self._all_cum: list[float] = []
        self._announced: set[str] = set()
        self._n_items = 0
        for _ in range(n_items):
            self._add_item()
        self._users: list[str] = []
        self._n_users = 0
        for _ in range(n_users):
            self._add_user()
        self._sessions: list[_Session] = []
        self._n_sessions = 0
        self._n_events = 0
        self._drifted = False
        self._pending: list[Event] = []

    # population ---------------------------------------------------------------------------

    def _add_item(self) -> str:
        rng = self._rng
        idx = self._n_items
        self._n_items += 1
        item = f"i{idx}"
        cat = rng.randrange(self.n_categories)
        # Popularity rank within its category: new items land anywhere in the tail or head.
        rank = len(self._cat_items[cat]) + 1
        weight = 1.0 / rank**self.zipf_s
        if rng.random() < 0.1:  # an occasional hit: new item with head-level popularity
            weight = 1.0 / rng.randint(1, 5) ** self.zipf_s
        items, cum = self._cat_items[cat], self._cat_cum[cat]
        items.append(item)
        cum.append((cum[-1] if cum else 0.0) + weight)
        self._all_items.append(item)
        self._all_cum.append((self._all_cum[-1] if self._all_cum else 0.0) + weight)
        brand = rng.randrange(self.n_brands)
        # Prices: log-uniform-ish per category, so categories differ in price level.
        base = 5.0 * (1 + cat % 7) ** 1.5
        self.truth.item_category[item] = category_label(cat)
        self.truth.item_brand[item] = f"b{brand}"
        self.truth.item_price[item] = round(base * (0.5 + 2.0 * rng.random()), 2)
        return item

    def _add_user(self) -> str:
        user = f"u{self._n_users}"
        self._n_users += 1
        self._users.append(user)
        self.truth.user_cluster[user] = self._rng.randrange(self.n_clusters)
        return user

    # stream -------------------------------------------------------------------------------

    def _event(self, event_type: str, user: str | None, item: str | None,
               session: str | None = None, **extra: object) -> Event:
        eid = f"{self.id_prefix}{self._n_events}-{len(self._pending)}"
        return Event(eid, event_type, int(self._ts), user, item, session, **extra)  # type: ignore[arg-type]

    def _upsert(self, item: str, new: bool = False) -> Event:
        t = self.truth
        ctx = {"new": True} if new else None
        category = t.item_category[item]
        return self._event(
            "item_upsert", None, item, None, price=t.item_price[item],
            category=None if self.untagged else category, brand=t.item_brand[item],
            title=f"{t.item_brand[item]} {category_words(category)} item {item}",
            available=True, context=ctx,
        )

    def _new_session(self) -> _Session:
        rng = self._rng
        if rng.random() < self.new_user_rate:
            user = self._add_user()
        else:
            # Activity is skewed too: a few heavy users, many light ones.
            user = self._users[int(len(self._users) * rng.random() ** 2)]
        self._n_sessions += 1
        steps = 1 + int(rng.expovariate(1 / 6))
        return _Session(user, f"s{self.seed}-{self._n_sessions}",
                        self.truth.user_cluster[user], steps)

    def _pick_item(self, cluster: int) -> str:
        rng = self._rng
        if rng.random() < self.taste_strength:
            prefs = (self.truth.cluster_prefs_drifted if self._drifted
                     else self.truth.cluster_prefs)[cluster]
            cat = prefs[rng.randrange(len(prefs))]
            items, cum = self._cat_items[cat], self._cat_cum[cat]
            if items:
                return items[bisect.bisect_left(cum, rng.random() * cum[-1])]
        cum = self._all_cum
        return self._all_items[bisect.bisect_left(cum, rng.random() * cum[-1])]

    def _step(self, s: _Session) -> None:
        """Append the session's next event(s) to ``self._pending``."""
        rng = self._rng
        r = rng.random()
        ev = self._pending.append
        if s.current is not None and r < 0.10:
            ev(self._event("add_to_cart", s.user, s.current, s.session_id, quantity=1))
            s.cart.append(s.current)
        elif s.current is not None and r < 0.14:
            ev(self._event("favorite", s.user, s.current, s.session_id))
            s.favorites.append(s.current)
        elif s.cart and r < 0.20:
            item = s.cart.pop(rng.randrange(len(s.cart)))
            if rng.random() < 0.6:
                ev(self._event("purchase", s.user, item, s.session_id, quantity=1,
                               price=self.truth.item_price[item]))
            else:
                ev(self._event("remove_from_cart", s.user, item, s.session_id))
        elif s.favorites and r < 0.205:
            ev(self._event("unfavorite", s.user, s.favorites.pop(), s.session_id))
        else:
            item = self._pick_item(s.cluster)
            if item not in self._announced:
                self._announced.add(item)
                ev(self._upsert(item))
            kind = "click" if r > 0.97 else "view"
            ev(self._event(kind, s.user, item, s.session_id))
            s.current = item
        s.steps_left -= 1

    def events(self, n_events: int) -> Iterator[Event]:
        """Yield the next ``n_events`` events (call again to continue the same stream)."""
        rng = self._rng
        sessions = self._sessions
        gap = 1.0 / self.mean_gap_ms if self.mean_gap_ms > 0 else 0.0
        pending = self._pending
        for _ in range(n_events):
            if not pending:
                if self.drift_at is not None and not self._drifted \
                        and self._n_events >= self.drift_at:
                    self._drifted = True
                    self.truth.drift_event_index = self._n_events
                    self.truth.drift_ts_ms = int(self._ts)
                if gap:
                    self._ts += rng.expovariate(gap)
                if rng.random() < self.new_item_rate:
                    item = self._add_item()
                    self._announced.add(item)
                    pending.append(self._upsert(item, new=True))
                else:
                    while len(sessions) < self.concurrent_sessions:
                        sessions.append(self._new_session())
                    i = rng.randrange(len(sessions))
                    s = sessions[i]
                    self._step(s)
                    if s.steps_left <= 0:
                        # Purchases at checkout: some carts convert when the session ends.
                        for item in s.cart:
                            if rng.random() < 0.3:
                                pending.append(self._event(
                                    "purchase", s.user, item, s.session_id, quantity=1,
                                    price=self.truth.item_price[item]))
                        sessions[i] = sessions[-1]
                        sessions.pop()
                pending.reverse()  # pop() from the end keeps their order
            self._n_events += 1
            yield pending.pop()


def generate_events(
    n_events: int,
    seed: int = 0,
    n_users: int = 1000,
    n_items: int = 5000,
    n_categories: int = 20,
    drift_at: int | None = None,
    start_ts_ms: int = DEFAULT_START_TS_MS,
    **options: object,
) -> Iterator[Event]:
    """Yield ``n_events`` synthetic events; same arguments, same stream.

    Extra keyword ``options`` go to :class:`Storefront` (``n_brands``, ``n_clusters``,
    ``zipf_s``, ``new_item_rate``, ...). Use :class:`Storefront` directly when you need
    the ground truth.

    >>> ev = next(iter(generate_events(1, seed=3, start_ts_ms=1_600_000_000_000)))
    >>> ev.ts_ms >= 1_600_000_000_000
    True
    """
    shop = Storefront(seed=seed, n_users=n_users, n_items=n_items, n_categories=n_categories,
                      drift_at=drift_at, start_ts_ms=start_ts_ms, **options)  # type: ignore[arg-type]
    return shop.events(n_events)


def new_run_id() -> str:
    """A short random id of one generator run (six hex digits)."""
    return secrets.token_hex(3)


__all__ = ["DEFAULT_START_TS_MS", "GroundTruth", "Storefront", "category_label", "category_words",
           "generate_events", "new_run_id"]
