"""The freshrec topics on a broker: their configs (the one place the compacted topics'
settings live), creating them, and bringing existing ones to those configs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from devstack.prerequisites import LocalKafkaError
from devstack.processes import Log, say
from freshrec_common import kafka_config

if TYPE_CHECKING:
    from kafka.admin import KafkaAdminClient

    from freshrec_common.settings import Settings

@dataclass(frozen=True)
class TopicInfo:
    name: str
    partitions: int
    configs: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        extra = "  ".join(f"{k}={v}" for k, v in sorted(self.configs.items()))
        return f"{self.name:<32} {self.partitions:>3} partition(s)  {extra}".rstrip()


# Topic-level configs of the two compacted changelog topics (recommendations by user_id,
# item embeddings by item_id). The job reads the item-embedding changelog from the start on
# every (re)start, so compaction has to keep up with a few thousand records/s; with the
# broker defaults (segment.ms 7 days, segment.bytes 1 GiB) the log is never cleaned at that
# volume, because the cleaner never touches the active segment. This is the one place the
# values live: `freshrec kafka up` creates the topics with them and brings existing topics
# to them; deploy/k8s/kafka-topics.yaml and deploy/compose/docker-compose.yml carry the same
# values (tests/unit/test_deploy_manifests.py checks that they agree); docs/operations.md
# ("Compacted topics") explains them.
COMPACTED_TOPIC_CONFIGS: Mapping[str, str] = MappingProxyType(
    {
        "cleanup.policy": "compact",
        # Roll the active segment (never cleaned) after a minute at the latest: a restart
        # replays the compacted head, about one record per key, plus at most about a minute
        # of updates still in the active segment. The cleaner merges small cleaned segments
        # back together (up to segment.bytes), so the number of files stays small.
        "segment.ms": "60000",
        # ... or after 16 MiB, whichever comes first: above ~280 KB/s per partition the size
        # bound rolls first.
        "segment.bytes": str(16 * 1024 * 1024),
        # Clean as soon as 10 % of the log is dirty. The compacted head is small (one record
        # per key), so rewriting it often is cheap.
        "min.cleanable.dirty.ratio": "0.1",
        # No consumer needs the intermediate versions of a key, only the latest one.
        "min.compaction.lag.ms": "0",
        # A dirty record waits at most 5 minutes for the cleaner, even while the dirty ratio
        # stays below 0.1 (a large head with a trickle of updates).
        "max.compaction.lag.ms": "300000",
        # Tombstones (a forgotten user's recommendation list) stay readable for a day after
        # they are compacted: a consumer that rebuilds its view from the start, or was down
        # for less than a day, still sees the deletion and drops the list. After that the
        # tombstone, the user's key, is gone from the log as well.
        "delete.retention.ms": "86400000",
    }
)


def default_topics(settings: Settings) -> dict[str, dict[str, str]]:
    """The freshrec topics and their configs (events and recommendations keyed by user_id,
    item embeddings by item_id; both changelog topics compacted, with
    :data:`COMPACTED_TOPIC_CONFIGS`)."""
    t = settings.topics
    return {
        t.events: {},
        t.dlq: dlq_topic_configs(settings),
        t.recommendations: dict(COMPACTED_TOPIC_CONFIGS),
        t.item_embeddings: dict(COMPACTED_TOPIC_CONFIGS),
    }


def dlq_topic_configs(settings: Settings) -> dict[str, str]:
    """Configs of the dead-letter topic: room for the largest rejected record, wrapped."""
    return {"max.message.bytes": str(settings.topics.dlq_max_message_bytes)}


def _create_topics(
    admin: KafkaAdminClient, topics: Mapping[str, Mapping[str, str]], partitions: int
) -> list[str]:
    """Create the missing ones; return the names created. Existing topics are left alone."""
    import kafka.errors as errors

    if not topics:
        return []
    request = {
        name: {"num_partitions": partitions, "replication_factor": 1, "configs": dict(configs)}
        for name, configs in topics.items()
    }
    result = admin.create_topics(request, raise_errors=False)
    created, problems = [], []
    for t in result["topics"]:
        code = t.get("error_code", 0)
        if code == 0:
            created.append(t["name"])
        elif code != errors.TopicAlreadyExistsError.errno:
            err = errors.for_code(code).__name__
            problems.append(f"{t['name']}: {err} {t.get('error_message') or ''}".rstrip())
    if problems:
        raise LocalKafkaError("creating topics failed: " + "; ".join(problems))
    if created:
        admin.wait_for_topics(created, timeout_ms=30_000)
    return created


def create_topic(
    settings: Settings,
    name: str,
    *,
    partitions: int | None = None,
    configs: Mapping[str, str] | None = None,
    admin: KafkaAdminClient | None = None,
) -> bool:
    """Create one topic on the broker of ``settings.kafka`` and wait until it has leaders.

    Returns False if it already existed. ``partitions`` defaults to ``topics.partitions``.
    """
    own = admin is None
    admin = admin or kafka_config.admin_client(settings)
    try:
        created = _create_topics(
            admin, {name: dict(configs or {})}, partitions or settings.topics.partitions
        )
    finally:
        if own:
            admin.close()
    return bool(created)


def describe_topics(admin: KafkaAdminClient, names: list[str] | None = None) -> list[TopicInfo]:
    """Partitions and non-default configs of ``names`` (default: all non-internal topics)."""
    from kafka.admin import ConfigResource, ConfigResourceType

    meta = admin.describe_topics(names)
    meta = [t for t in meta if not t.get("is_internal") and not t["name"].startswith("__")]
    if not meta:
        return []
    resources = [ConfigResource(ConfigResourceType.TOPIC, t["name"]) for t in meta]
    described = admin.describe_configs(resources).get("topic", {})
    out = []
    for t in sorted(meta, key=lambda t: t["name"]):
        cfg = {k: v.get("value") for k, v in described.get(t["name"], {}).items()}
        out.append(TopicInfo(t["name"], len(t.get("partitions") or []), cfg))
    return out


def _topic_overrides(admin: KafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    """The topic-level config overrides of ``names`` (not broker defaults), by topic."""
    from kafka.admin import ConfigResource, ConfigResourceType

    described = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, n) for n in names], config_filter="all"
    ).get("topic", {})
    return {
        name: {
            k: v.get("value")
            for k, v in described.get(name, {}).items()
            if v.get("config_source") == "DYNAMIC_TOPIC_CONFIG"
        }
        for name in names
    }


def ensure_topics(settings: Settings, admin: KafkaAdminClient, log: Log = say) -> list[str]:
    """Create the missing freshrec topics; bring the configs of existing ones to
    :func:`default_topics` (only the keys that differ; other overrides are kept); note too few
    partitions. Idempotent: a second call changes nothing."""
    from kafka.admin import ConfigResource, ConfigResourceType

    wanted = default_topics(settings)
    existing = set(admin.list_topics())
    created = _create_topics(
        admin, {n: c for n, c in wanted.items() if n not in existing}, settings.topics.partitions
    )
    present = [n for n in wanted if n in existing]
    overrides = _topic_overrides(admin, present) if present else {}
    for info in describe_topics(admin, present) if present else []:
        have = overrides.get(info.name, {})
        changes = {k: v for k, v in wanted[info.name].items() if have.get(k) != v}
        if changes:
            result = admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, info.name, dict(changes))],
                raise_on_unknown=False,
            )
            outcome = result.get("topic", {}).get(info.name, "no answer")
            if outcome != "OK":
                raise LocalKafkaError(f"setting the configs of {info.name} failed: {outcome}")
            said = ", ".join(
                f"{k}={v} (was {have.get(k, 'the broker default')})" for k, v in changes.items()
            )
            log(f"kafka: set {info.name} {said}")
        if info.partitions < settings.topics.partitions:
            log(
                f"kafka: note: {info.name} has {info.partitions} partition(s), fewer than"
                f" topics.partitions={settings.topics.partitions}; left as is"
            )
    return created
