"""Registers the job metrics of ``freshrec_common.metrics`` on Flink's metric groups.

PyFlink's Python gauges report longs only, so rolling rates, losses and staleness use the
glue jar's ``DoubleGauge``; histograms are Prometheus-style ``_bucket{le}``, ``_sum`` and
``_count`` series built from counters, so ``histogram_quantile`` works on them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from freshrec_common.metrics import JOB_METRICS, LATENCY_BUCKETS_S

GROUP = "freshrec"
_BOUNDS = np.asarray([*LATENCY_BUCKETS_S, float("inf")])


def _spec_name(name: str) -> str:
    spec = JOB_METRICS[name]
    # Flink's reporter prepends the scope and the group: ..._operator_freshrec_<rest>.
    return spec.name.removeprefix(f"{GROUP}_")


class JobMetrics:
    """The metrics of one operator instance, by their names in ``freshrec_common.metrics``."""

    def __init__(self, runtime_context: Any) -> None:
        self._group = runtime_context.get_metrics_group().add_group(GROUP)
        self._labelled: dict[tuple[str, ...], Any] = {}

    def _labelled_group(self, name: str, label_values: tuple[str, ...]) -> Any:
        group = self._group
        for label, value in zip(JOB_METRICS[name].labels, label_values, strict=False):
            group = group.add_group(label, value)
        return group

    def counter(self, name: str, *label_values: str) -> Any:
        """A counter; with ``label_values``, one per value of the spec's (bounded) labels."""
        key = (name, *label_values)
        counter = self._labelled.get(key)
        if counter is None:
            counter = self._labelled_group(name, label_values).counter(_spec_name(name))
            self._labelled[key] = counter
        return counter

    def gauge(self, name: str, *label_values: str) -> Any:
        """A double gauge with ``set(value)``; with ``label_values``, one per value of the
        spec's labels, like :meth:`counter`."""
        from pemja import findClass  # the JVM bridge of thread mode

        key = (name, *label_values)
        gauge = self._labelled.get(key)
        if gauge is None:
            gauge = findClass("io.freshrec.flink.DoubleGauge")()
            # MetricGroupImpl wraps the Java MetricGroup; register the Java gauge on it.
            self._labelled_group(name, label_values)._metrics.gauge(_spec_name(name), gauge)
            self._labelled[key] = gauge
        return gauge

    def histogram(self, name: str) -> LatencyHistogram:
        return LatencyHistogram(self, name)


class LatencyHistogram:
    """Cumulative ``_bucket{le}`` counters plus ``_sum`` (milliseconds) and ``_count``."""

    def __init__(self, metrics: JobMetrics, name: str) -> None:
        base = _spec_name(name)
        group = metrics._group
        self._buckets = [group.add_group("le", _le(b)).counter(f"{base}_bucket")
                         for b in (*LATENCY_BUCKETS_S, float("inf"))]
        self._count = group.counter(f"{base}_count")
        # Counters are integers: the sum is kept in milliseconds (documented in the table).
        self._sum_ms = group.counter(f"{base}_sum_ms")

    def observe_many(self, seconds: list[float]) -> None:
        """Observe many values with one increment per bucket (each one a call into Java)."""
        if not seconds:
            return
        values = np.maximum(np.asarray(seconds, dtype=np.float64), 0.0)
        # bucket j counts values <= bound j: cumulative counts of the sorted values
        counts = np.searchsorted(np.sort(values), _BOUNDS, side="right")
        for counter, n in zip(self._buckets, counts.tolist(), strict=True):
            if n:
                counter.inc(n)
        self._count.inc(len(seconds))
        self._sum_ms.inc(int(values.sum() * 1000))


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else f"{bound:g}"
