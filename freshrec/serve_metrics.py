"""The ``freshrec_serve_*`` metrics of ``freshrec serve``, on its own registry."""

from __future__ import annotations

from typing import Any

from freshrec_common.metrics import SERVE_LATENCY_BUCKETS_S, SERVE_METRICS, STALENESS_BUCKETS_S


class ServeMetrics:
    """The ``freshrec_serve_*`` metrics of :data:`freshrec_common.metrics.SERVE_METRICS`."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        spec = SERVE_METRICS

        def counter(name: str) -> Any:  # prometheus-client appends _total itself
            return Counter(name.removesuffix("_total"), spec[name].help, spec[name].labels,
                           registry=self.registry)

        self.requests = counter("freshrec_serve_requests_total")
        self.records_read = counter("freshrec_serve_records_read_total")
        self.records_skipped = counter("freshrec_serve_records_skipped_total")
        s = spec["freshrec_serve_request_latency_seconds"]
        self.latency = Histogram(s.name, s.help, s.labels, registry=self.registry,
                                 buckets=SERVE_LATENCY_BUCKETS_S)
        s = spec["freshrec_serve_list_staleness_seconds"]
        self.staleness = Histogram(s.name, s.help, registry=self.registry,
                                   buckets=STALENESS_BUCKETS_S)
        s = spec["freshrec_serve_consumer_lag_records"]
        self.lag = Gauge(s.name, s.help, s.labels, registry=self.registry)
        s = spec["freshrec_serve_ready"]
        self.ready = Gauge(s.name, s.help, registry=self.registry)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
