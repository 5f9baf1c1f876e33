"""Kafka fixtures of the integration and e2e layers: a real Apache Kafka broker started by the
suite itself, registered once for the whole run (``pytest_plugins`` in the root conftest).

``kafka_broker`` is one single-node KRaft broker for the whole run, shared by both layers and
every pytest-xdist worker: the first test that needs it starts it, through the same
functions as ``freshrec kafka up``, on free loopback ports (never 9092, so a developer's own
``freshrec kafka up`` broker is left alone) with its state in the run's directory; the
controller stops it when the run ends (``pytest_unconfigure``). A run that needs no broker
(``-m unit``) starts none.
``fresh_topic`` creates a uniquely named topic per test and deletes it afterwards.

The jars come from ``local.cache_dir``: ``FRESHREC_LOCAL_CACHE_DIR`` if set, else the
repository's ``.cache`` (fetched by Maven on the first run, offline afterwards).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack.kafka_broker import BrokerInfo, broker_down, broker_up
from devstack.kafka_topics import create_topic
from devstack.prerequisites import LocalKafkaError
from devstack.processes import free_ports, locked
from freshrec_common import kafka_config
from freshrec_common.settings import Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]


def local_broker_overrides(state_dir: Path) -> list[str]:
    """``--set`` overrides for a test broker on free ports with its state in ``state_dir``.

    The kafka.* client settings are pinned to that broker (PLAINTEXT), whatever the
    environment says, so tests never talk to another cluster.
    """
    port, controller_port = free_ports(2)
    overrides = [
        f"local.port={port}",
        f"local.controller_port={controller_port}",
        "local.host=127.0.0.1",
        f"local.state_dir={state_dir}",
        f"kafka.bootstrap_servers=127.0.0.1:{port}",
        "kafka.security_protocol=PLAINTEXT",
        "kafka.sasl_mechanism=",
        "kafka.sasl_username=",
        "kafka.sasl_password=",
        "kafka.ssl_cafile=",
        "kafka.client_id=freshrec-tests",
    ]
    if "FRESHREC_LOCAL_CACHE_DIR" not in os.environ:
        overrides.append(f"local.cache_dir={REPO_ROOT / '.cache'}")
    return overrides


def local_broker_settings(state_dir: Path, extra: Sequence[str] = ()) -> Settings:
    """Settings for a test broker on free ports with its state in ``state_dir``."""
    return load_settings(overrides=[*local_broker_overrides(state_dir), *extra])


@dataclass(frozen=True)
class KafkaBroker:
    """A running test broker: its settings (kafka.* point at it) and bootstrap address."""

    settings: Settings
    bootstrap: str
    info: BrokerInfo

    def admin(self, **extra: Any):
        return kafka_config.admin_client(self.settings, **extra)

    def producer(self, **extra: Any):
        return kafka_config.producer(self.settings, **extra)

    def consumer(self, *topics: str, **extra: Any):
        return kafka_config.consumer(self.settings, *topics, **extra)


def start_broker(settings: Settings) -> BrokerInfo:
    try:
        return broker_up(settings)
    except LocalKafkaError as exc:  # missing Java/Maven, port clash: fail loudly, never skip
        pytest.fail(f"could not start the test Kafka broker: {exc}", pytrace=False)


# The run's directory, made by the controller before pytest-xdist starts its workers, which
# inherit the variable: there the broker's overrides and state live.
_RUN_DIR = "FRESHREC_TEST_RUN_DIR"
_OVERRIDES = "kafka-broker-overrides.json"
_passed = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        os.environ[_RUN_DIR] = tempfile.mkdtemp(prefix="freshrec-tests-")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_passed] = exitstatus == 0


def pytest_unconfigure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or _RUN_DIR not in os.environ:
        return
    run_dir = Path(os.environ.pop(_RUN_DIR))
    overrides = run_dir / _OVERRIDES
    if overrides.is_file():
        broker_down(load_settings(overrides=json.loads(overrides.read_text())),
                    log=lambda _m: None)
    if overrides.is_file() and not config.stash.get(_passed, False):
        print(f"the test broker's state and log are kept in {run_dir / 'kafka-state'}",
              file=sys.stderr)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_broker() -> KafkaBroker:
    run_dir = Path(os.environ[_RUN_DIR])
    with locked(run_dir / "kafka-broker.lock"):
        file = run_dir / _OVERRIDES
        if not file.is_file():
            file.write_text(json.dumps(local_broker_overrides(run_dir / "kafka-state")))
        overrides = json.loads(file.read_text())
    settings = load_settings(overrides=overrides)
    info = start_broker(settings)  # the first worker starts it, the others find it running
    return KafkaBroker(settings=settings, bootstrap=info.bootstrap, info=info)


@pytest.fixture
def fresh_topic(
    kafka_broker: KafkaBroker, request: pytest.FixtureRequest
) -> Iterator[Callable[..., str]]:
    """Factory: ``fresh_topic(partitions=1, configs=None, prefix=None) -> name``.

    Each call creates a new topic named after the test, deleted when the test ends.
    """
    created: list[str] = []
    base = re.sub(r"[^a-zA-Z0-9._-]+", "-", request.node.name)[:80].strip("-.")

    def make(
        partitions: int = 1, configs: Mapping[str, str] | None = None, prefix: str | None = None
    ) -> str:
        name = f"test.{prefix or base}.{uuid.uuid4().hex[:10]}"
        create_topic(kafka_broker.settings, name, partitions=partitions, configs=configs)
        created.append(name)
        return name

    yield make
    if created:
        admin = kafka_broker.admin()
        try:
            admin.delete_topics(created, raise_errors=False)
        finally:
            admin.close()
