"""The local broker's files and commands: its state directory, ``server.properties`` of the
single combined KRaft node, the one-time storage format, and the ``java`` command line.

Layout (relative ``local.state_dir`` is taken from the current directory)::

    <state_dir>/server.properties  data/  logs/server.log  logs/broker.out  broker.pid
"""

from __future__ import annotations

import base64
import os
import shlex
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from devstack.jars import DEPLOY_DIR
from devstack.prerequisites import LocalKafkaError
from devstack.processes import Log
from freshrec_common.jars import JarPaths

if TYPE_CHECKING:
    from freshrec_common.settings import Settings

LOG4J2_CONFIG = DEPLOY_DIR / "log4j2.properties"
NODE_ID = 1
MAIN_CLASS = "kafka.Kafka"


@dataclass(frozen=True)
class BrokerPaths:
    """Where a broker of one ``local.state_dir`` keeps its files."""

    state: Path
    data: Path
    logs: Path
    config: Path
    pid: Path
    out: Path
    lock: Path

    @classmethod
    def of(cls, settings: Settings) -> BrokerPaths:
        state = Path(settings.local.state_dir).expanduser().resolve()
        return cls(
            state=state,
            data=state / "data",
            logs=state / "logs",
            config=state / "server.properties",
            pid=state / "broker.pid",
            out=state / "logs" / "broker.out",
            lock=state / ".lock",
        )


def render_server_properties(settings: Settings, data_dir: Path) -> str:
    """``server.properties`` of the single combined KRaft node (loopback only)."""
    loc = settings.local
    props = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.voters": f"{NODE_ID}@{loc.host}:{loc.controller_port}",
        "listeners": f"PLAINTEXT://{loc.host}:{loc.port},CONTROLLER://{loc.host}:{loc.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{loc.host}:{loc.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": str(settings.topics.partitions),
        # Single node: every internal topic has one replica.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        # Fewer internal partitions: the first consumer group / transaction starts faster.
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.num.partitions": "8",
        "group.initial.rebalance.delay.ms": "0",
        # After a crash (SIGKILL) the restarted node cannot register until the old broker
        # session expires (DUPLICATE_BROKER_REGISTRATION): 9 s by default, 4 s here.
        "broker.session.timeout.ms": "4000",
        "broker.heartbeat.interval.ms": "1000",
    }
    lines = ["# Written by `freshrec kafka up` from the local.* settings; edits are overwritten."]
    lines += [f"{k}={v}" for k, v in props.items()]
    return "\n".join(lines) + "\n"


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (22 chars).

    >>> cid = new_cluster_id()
    >>> len(cid), cid[0] != "-"
    (22, True)
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not cid.startswith("-"):  # as Kafka's Uuid.randomUuid: no leading dash
            return cid


def format_storage(java: str, jars: JarPaths, paths: BrokerPaths, log: Log) -> None:
    if (paths.data / "meta.properties").is_file():
        return
    cluster_id = new_cluster_id()
    log(f"kafka: formatting KRaft storage in {paths.data} (cluster id {cluster_id})")
    cmd = [
        java, "-Xmx256m", "-cp", jars.kafka_classpath,
        f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}", f"-Dkafka.logs.dir={paths.logs}",
        "kafka.tools.StorageTool", "format",
        "-t", cluster_id, "-c", str(paths.config), "-g",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    if out.returncode != 0:
        raise LocalKafkaError(
            f"formatting the KRaft storage failed (exit {out.returncode}):\n"
            f"{(out.stdout + out.stderr).strip()}\n  command: {' '.join(cmd)}"
        )


# kafka-run-class.sh's defaults; as with Kafka's scripts, KAFKA_JVM_PERFORMANCE_OPTS replaces them.
KAFKA_JVM_PERFORMANCE_OPTS = (
    "-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 "
    "-XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true"
)


def broker_command(settings: Settings, java: str, jars: JarPaths, paths: BrokerPaths) -> list[str]:
    heap = settings.local.broker_heap
    performance = os.environ.get("KAFKA_JVM_PERFORMANCE_OPTS") or KAFKA_JVM_PERFORMANCE_OPTS
    return [
        java, f"-Xmx{heap}", f"-Xms{heap}", *shlex.split(performance),
        f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}", f"-Dkafka.logs.dir={paths.logs}",
        "-cp", jars.kafka_classpath, MAIN_CLASS, str(paths.config),
    ]  # fmt: skip
