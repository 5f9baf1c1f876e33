"""Marks each test by its layer (unit / integration / e2e) from the folder it lives in;
doctests in the packages are unit tests. Registers, once for the whole run, the Kafka broker
fixtures of the integration and e2e layers and the Hypothesis profiles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.kafka_fixtures", "tests.fuzzing"]

_LAYERS = ("unit", "integration", "e2e")

# The suite's JVMs do little work each: the C1 compiler alone and the serial collector cut
# a job test's CPU by ~20 % and the test brokers' by ~45 %. PyFlink's launcher and Flink's
# scripts read JVM_ARGS, devstack's broker (as Kafka's scripts) KAFKA_JVM_PERFORMANCE_OPTS;
# a developer's own values win.
_LIGHT_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
os.environ.setdefault("JVM_ARGS", _LIGHT_JVM)
os.environ.setdefault("KAFKA_JVM_PERFORMANCE_OPTS", _LIGHT_JVM)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.DoctestItem):
            item.add_marker(pytest.mark.unit)
            continue
        parts = Path(str(item.fspath)).parts
        for layer in _LAYERS:
            if layer in parts:
                item.add_marker(getattr(pytest.mark, layer))
