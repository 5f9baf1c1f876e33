"""The small storefront of the job tests: four categories of items, users with one taste
each, their events, and the scenario steps several job tests share."""

from __future__ import annotations

from collections.abc import Iterator

from schemas.events import Event
from schemas.recommendation import Recommendation
from tests.integration.job_harness import JobProcess, Record, latest_by_key

CATEGORIES = ["shoes", "books", "garden", "audio"]
ITEMS_PER_CATEGORY = 15
USERS_PER_CATEGORY = 3
BASE_TS = 1_760_000_000_000


def item_id(category: str, n: int) -> str:
    return f"{category}-{n:02d}"


def users() -> Iterator[tuple[str, str]]:
    for c, category in enumerate(CATEGORIES):
        for k in range(USERS_PER_CATEGORY):
            yield f"user-{c}-{k}", category


def catalogue() -> list[Event]:
    return [
        Event(f"up-{item_id(cat, n)}", "item_upsert", BASE_TS, item_id=item_id(cat, n),
              category=cat, brand=f"brand-{n % 3}", price=10.0 + n, title=f"{cat} {n}")
        for cat in CATEGORIES for n in range(ITEMS_PER_CATEGORY)
    ]


def taste_events() -> tuple[list[Event], dict[str, int], dict[str, set[str]]]:
    """Each user views 8 and buys 2 items of their category; returns events, counts, buys."""
    events: list[Event] = []
    counts: dict[str, int] = {}
    bought: dict[str, set[str]] = {}
    for u, (user, category) in enumerate(users()):
        ts = BASE_TS + 1000
        for j in range(8):
            n = (u * 3 + j) % ITEMS_PER_CATEGORY
            events.append(Event(f"{user}-v{j}", "view", ts + j, user_id=user,
                                item_id=item_id(category, n)))
        buys = {item_id(category, (u * 3 + j) % ITEMS_PER_CATEGORY) for j in (1, 4)}
        for j, item in enumerate(sorted(buys)):
            events.append(Event(f"{user}-p{j}", "purchase", ts + 20 + j, user_id=user,
                                item_id=item))
        counts[user] = 10
        bought[user] = buys
    return events, counts, bought


def announce_catalogue(job: JobProcess) -> None:
    """Send the catalogue's upserts and wait until every item is on the changelog."""
    job.send_events(catalogue())
    job.wait_for(job.settings.topics.item_embeddings,
                 lambda rs: len(latest_by_key(rs)) >= len(CATEGORIES) * ITEMS_PER_CATEGORY,
                 timeout_s=180, what="the catalogue")


def shop_tastes(job: JobProcess) -> tuple[list[Record], dict[str, int]]:
    """The catalogue, then every user's tastes: the lists after them and each user's count."""
    topics = job.settings.topics
    events, counts, _ = taste_events()
    announce_catalogue(job)
    job.send_events(events)
    records = job.wait_for(
        topics.recommendations,
        lambda rs: all(u in latest_by_key(rs) and Recommendation.from_json(
            latest_by_key(rs)[u].value).events_applied == counts[u] for u, _ in users()),
        what="lists reflecting every user's events")
    return records, counts


def view_once_more(job: JobProcess, expected: dict[str, int], ts: int = BASE_TS + 9000
                   ) -> list[Record]:
    """One more view per user (at ``ts``, e.g. after a restore); waits for lists showing
    ``expected`` events applied per user and returns the recommendation records."""
    job.send_events([
        Event(f"{u}-after-{ts}", "view", ts, user_id=u, item_id=item_id(c, 14))
        for u, c in users()])
    return job.wait_for(
        job.settings.topics.recommendations,
        lambda rs: all(u in latest_by_key(rs) and latest_by_key(rs)[u].value is not None
                       and Recommendation.from_json(latest_by_key(rs)[u].value).events_applied
                       == n for u, n in expected.items()),
        what="lists counting on from the restored state")
