"""Marks each test by its layer (unit / integration / e2e) from the folder it lives in;
doctests in the packages are unit tests. Registers, once for the whole run, the Kafka broker
fixtures of the integration and e2e layers and the Hypothesis profiles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.kafka_fixtures", "tests.fuzzing"]

_LAYERS = ("unit", "integration", "e2e")

# The suite's JVMs (each job's MiniCluster, the standalone cluster's daemons) live for
# seconds: the C1 compiler alone and the serial collector cut a job test's CPU by ~20 %.
# PyFlink's launcher and Flink's scripts read JVM_ARGS; a developer's own value wins.
os.environ.setdefault("JVM_ARGS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
# The same for the test brokers (devstack.kafka_broker_layout, as Kafka's scripts read it).
os.environ.setdefault("KAFKA_JVM_PERFORMANCE_OPTS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.DoctestItem):
            item.add_marker(pytest.mark.unit)
            continue
        parts = Path(str(item.fspath)).parts
        for layer in _LAYERS:
            if layer in parts:
                item.add_marker(getattr(pytest.mark, layer))
