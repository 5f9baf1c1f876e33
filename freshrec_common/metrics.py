"""Every metric freshrec exports, in one table: names, types, labels and meaning.

Names follow ``freshrec_<subsystem>_<name>_<unit>``; counters end in ``_total``; label values
are bounded (event types, error codes, histogram buckets), never user or item ids.

Job metrics are registered on Flink's metric groups (group ``freshrec``) and exported by
Flink's Prometheus reporter, which prefixes the operator scope:
``flink_taskmanager_job_task_operator_<name>`` (see :func:`exported_names`). Metrics of our
other processes (``freshrec produce``, ``freshrec replay``) use prometheus-client directly
under their plain names.

>>> exported_names(JOB_METRICS["freshrec_job_dlq_writes_total"])
['flink_taskmanager_job_task_operator_freshrec_job_dlq_writes_total']
"""

from __future__ import annotations

from dataclasses import dataclass

FLINK_OPERATOR_PREFIX = "flink_taskmanager_job_task_operator_"
# Event-to-recommendation latency buckets (seconds), Prometheus-histogram style.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # counter, gauge or histogram
    help: str
    labels: tuple[str, ...] = ()
    operator: str = ""  # Flink operator that reports it; "" for our own processes


def exported_names(spec: MetricSpec) -> list[str]:
    """The series names Prometheus stores for a metric.

    Flink's reporter prefixes the operator scope and puts the key of a key/value metric
    group (a job metric's bounded labels) into the name too: a labelled job counter is
    ``..._freshrec_<label>[_<label>]_job_<rest>``; a histogram is
    ``..._freshrec_le_job_<rest>_bucket`` plus ``_count`` and ``_sum_ms`` counters without
    ``le``.

    >>> exported_names(JOB_METRICS["freshrec_job_events_consumed_total"])
    ['flink_taskmanager_job_task_operator_freshrec_event_type_job_events_consumed_total']
    """
    if not spec.operator:
        return [spec.name]
    rest = spec.name.removeprefix("freshrec_")
    prefix = f"{FLINK_OPERATOR_PREFIX}freshrec_"
    if spec.kind == "histogram":
        return [f"{prefix}le_{rest}_bucket", f"{prefix}{rest}_count", f"{prefix}{rest}_sum_ms"]
    if spec.labels:
        return [f"{prefix}{'_'.join(spec.labels)}_{rest}"]
    return [f"{prefix}{rest}"]


_JOB = [
    MetricSpec("freshrec_job_events_consumed_total", "counter",
               "Valid events read from the events topic.", ("event_type",), "user-update"),
    MetricSpec("freshrec_job_events_invalid_total", "counter",
               "Invalid records, by decode error code.", ("reason",), "user-update"),
    MetricSpec("freshrec_job_dlq_writes_total", "counter",
               "Records written to the dead-letter topic.", (), "user-update"),
    MetricSpec("freshrec_job_duplicates_dropped_total", "counter",
               "Events (or item upserts) whose event_id was seen within the dedup window.", (),
               "user-update, item-update"),
    MetricSpec("freshrec_job_refreshes_coalesced_total", "counter",
               "Events whose list refresh was merged into a pending one.", (), "user-update"),
    MetricSpec("freshrec_job_model_loss", "gauge",
               "Rolling mean pairwise (BPR) loss of the user-side steps.", (), "user-update"),
    MetricSpec("freshrec_job_prequential_hit_rate", "gauge",
               "Rolling share of events whose item was in the user's last published list "
               "(Recall@top_k, test-then-learn).", (), "user-update"),
    MetricSpec("freshrec_job_prequential_recall_at_10", "gauge",
               "Rolling Recall@10 of the last published lists (test-then-learn).", (),
               "user-update"),
    MetricSpec("freshrec_job_prequential_ndcg", "gauge",
               "Rolling NDCG@top_k of the last published lists (test-then-learn).", (),
               "user-update"),
    MetricSpec("freshrec_job_blend_sampled_serving", "gauge",
               "1 while the lists use the score blend learned against rows drawn from the "
               "catalogue (with its interaction layer), 0 while they use the linear one "
               "learned among its top rows (docs/model.md: the blend selection); per "
               "experiment variant, each of which learns its own ('default' when no "
               "experiment runs).", ("variant",), "user-update"),
    MetricSpec("freshrec_job_experiment_lists_total", "counter",
               "Lists published, by experiment variant (with experiments.file set).",
               ("variant",), "user-update"),
    MetricSpec("freshrec_job_experiment_tests_total", "counter",
               "Events tested against the list their user was shown before them, by "
               "experiment variant and user group (a fixed hash of the user id into "
               "32 groups: the units of the intervals).", ("variant", "user_group"),
               "user-update"),
    MetricSpec("freshrec_job_experiment_hits_total", "counter",
               "Tested events whose item was in that list (hits / tests = the variant's "
               "prequential hit rate, Recall@top_k), by experiment variant and user group.",
               ("variant", "user_group"), "user-update"),
    MetricSpec("freshrec_job_experiment_hits_at_10_total", "counter",
               "Tested events whose item was in the list's first 10 (Recall@10), by "
               "experiment variant and user group.", ("variant", "user_group"),
               "user-update"),
    MetricSpec("freshrec_job_drift_detections_total", "counter",
               "ADWIN drift detections on the prequential hit stream.", (), "user-update"),
    MetricSpec("freshrec_job_users_in_state", "gauge",
               "Users with state on this subtask (created minus forgotten since start).", (),
               "user-update"),
    MetricSpec("freshrec_job_items_in_replica", "gauge",
               "Items in this subtask's item replica.", (), "user-update"),
    MetricSpec("freshrec_job_item_replica_staleness_seconds", "gauge",
               "Delay from an item vector's publication to its arrival in the replica.", (),
               "user-update"),
    MetricSpec("freshrec_job_item_updates_published_total", "counter",
               "Item vectors published to the item-embedding changelog.", (), "item-update"),
    MetricSpec("freshrec_job_recommendations_published_total", "counter",
               "Recommendation lists published.", (), "user-update"),
    MetricSpec("freshrec_job_recommendations_cold_start_total", "counter",
               "Lists published for cold-start users (trending/cluster fallbacks).", (),
               "user-update"),
    MetricSpec("freshrec_job_tombstones_published_total", "counter",
               "Tombstones published for forgotten users.", (), "user-update"),
    MetricSpec("freshrec_job_refresh_batch_size", "gauge",
               "Users scored in the last batched refresh (one matrix product).", (),
               "user-update"),
    MetricSpec("freshrec_job_event_to_recommendation_latency_seconds", "histogram",
               "From an event's own timestamp (ts) to its list's publication.", ("le",),
               "user-update"),
    MetricSpec("freshrec_job_ingest_to_recommendation_latency_seconds", "histogram",
               "From the event's Kafka append time to its list's publication.", ("le",),
               "user-update"),
]
JOB_METRICS: dict[str, MetricSpec] = {m.name: m for m in _JOB}

_PROCESSES = [
    MetricSpec("freshrec_produce_events_sent_total", "counter", "Events handed to Kafka."),
    MetricSpec("freshrec_produce_events_acked_total", "counter",
               "Events acknowledged by the broker (acks=all)."),
    MetricSpec("freshrec_produce_events_failed_total", "counter", "Events that failed to send."),
    MetricSpec("freshrec_produce_rows_refused_total", "counter",
               "Input rows refused by --validate."),
    MetricSpec("freshrec_produce_rate_events_per_second", "gauge", "Achieved send rate."),
    MetricSpec("freshrec_replay_events_total", "counter", "Events replayed (test-then-learn)."),
    MetricSpec("freshrec_replay_rate_events_per_second", "gauge", "Achieved replay rate."),
    MetricSpec("freshrec_replay_recall", "gauge",
               "Prequential Recall@k of each model, set when the replay ends.", ("model", "k")),
]
PROCESS_METRICS: dict[str, MetricSpec] = {m.name: m for m in _PROCESSES}

# ``freshrec serve``: on its own HTTP port (``serve.port``, path /metrics). ``route`` is the
# route's pattern (or ``other``), never the ids in the path.
_SERVE = [
    MetricSpec("freshrec_serve_requests_total", "counter",
               "HTTP requests answered, by route and status code.", ("route", "status")),
    MetricSpec("freshrec_serve_request_latency_seconds", "histogram",
               "Time to answer a request, by route.", ("route",)),
    MetricSpec("freshrec_serve_list_staleness_seconds", "histogram",
               "Age of each list served (now - its produced_at)."),
    MetricSpec("freshrec_serve_consumer_lag_records", "gauge",
               "Records of a topic not read into the store yet (high watermark - position).",
               ("topic",)),
    MetricSpec("freshrec_serve_records_read_total", "counter",
               "Records read from a topic into the store.", ("topic",)),
    MetricSpec("freshrec_serve_records_skipped_total", "counter",
               "Records left out of the store (no usable key, or not a valid v1 record).",
               ("topic",)),
    MetricSpec("freshrec_serve_ready", "gauge",
               "1 once the store caught up with the topics' end offsets taken at start."),
]
SERVE_METRICS: dict[str, MetricSpec] = {m.name: m for m in _SERVE}
# Request latency buckets (seconds): the goal is a p99 under 10 ms.
SERVE_LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# List age buckets (seconds): from the freshness goal (0.1 s) to lists a day old.
STALENESS_BUCKETS_S: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0)
