"""A real single-node Apache Kafka (KRaft, combined broker + controller) for development.

``freshrec kafka up|down|status|jars`` and the integration tests use the functions here:

* :func:`ensure_jars` fetches Kafka and the Flink Kafka connector with Maven once
  (``deploy/local/pom.xml``) into ``local.cache_dir``; later calls make no Maven call
  and work offline.
* :func:`broker_up` formats the KRaft storage once, starts ``kafka.Kafka`` as a detached
  background process (own session, pid file in ``local.state_dir``), waits until it answers
  a metadata request and creates the freshrec topics (existing ones get the configs of
  :func:`default_topics` where theirs differ). Calling it again is safe; a stale pid file
  (process gone, or the pid now used by another program) is replaced.
* :func:`broker_down` stops it (SIGTERM, then SIGKILL), :func:`broker_status` reports it.

Relative ``local.state_dir`` / ``local.cache_dir`` are taken from the current directory.
Layout::

    <cache_dir>/kafka-<version>/libs/*.jar      broker classpath (java -cp '<libs>/*')
    <cache_dir>/kafka-<version>/.fetched        stamp: what Maven fetched, from which pom
    <cache_dir>/flink/flink-sql-connector-kafka-<version>.jar
    <state_dir>/server.properties  data/  logs/server.log  logs/broker.out  broker.pid
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import psutil

from freshrec import kafka_config
from freshrec.polling import wait_until
from freshrec.processes import (
    Log,
    cmdline,
    die_with_parent,
    locked,
    port_in_use,
    say,
    stop_processes,
)

if TYPE_CHECKING:
    from kafka.admin import KafkaAdminClient

    from freshrec.settings import Settings

FLINK_CONNECTOR_VERSION = "5.0.0-2.2"
FLINK_CONNECTOR_JAR = f"flink-sql-connector-kafka-{FLINK_CONNECTOR_VERSION}.jar"
MIN_JAVA = 17
DEPLOY_DIR = Path(__file__).resolve().parent.parent / "deploy" / "local"
POM = DEPLOY_DIR / "pom.xml"
LOG4J2_CONFIG = DEPLOY_DIR / "log4j2.properties"
NODE_ID = 1
_MAIN_CLASS = "kafka.Kafka"
_STAMP = ".fetched"
# Brokers started by this process, kept so they are not garbage-collected while running
# (tests start one and stop it in the same process).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}



class LocalKafkaError(RuntimeError):
    """The local broker could not be set up, started or stopped; the message says why."""


@dataclass(frozen=True)
class JarPaths:
    """Where the Maven-fetched jars are."""

    kafka_libs: Path
    connector_jar: Path

    @property
    def kafka_classpath(self) -> str:
        """The broker's ``java -cp`` value."""
        return f"{self.kafka_libs}{os.sep}*"

    @property
    def connector_url(self) -> str:
        """``file://`` URL for ``env.add_jars`` / ``pipeline.jars``."""
        return self.connector_jar.as_uri()


@dataclass(frozen=True)
class TopicInfo:
    name: str
    partitions: int
    configs: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        extra = "  ".join(f"{k}={v}" for k, v in sorted(self.configs.items()))
        return f"{self.name:<32} {self.partitions:>3} partition(s)  {extra}".rstrip()


@dataclass(frozen=True)
class BrokerInfo:
    """A running local broker, as :func:`broker_up` left it."""

    pid: int
    bootstrap: str
    state_dir: Path
    log_file: Path
    already_running: bool
    started_in_s: float
    topics_created: tuple[str, ...] = ()


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    state_dir: Path
    topics: tuple[TopicInfo, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class _Paths:
    state: Path
    data: Path
    logs: Path
    config: Path
    pid: Path
    out: Path
    lock: Path

    @classmethod
    def of(cls, settings: Settings) -> _Paths:
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


# --------------------------------------------------------------------------- prerequisites


def _install_hint(debian: str, brew: str) -> str:
    return f"install it (Debian/Ubuntu: `apt-get install {debian}`; macOS: `brew install {brew}`)"


def java_executable() -> str:
    """The ``java`` to run the broker with: ``$JAVA_HOME/bin/java``, else ``java`` on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise LocalKafkaError(
            f"Java {MIN_JAVA}+ is needed to run the local Kafka broker, and no `java` was found"
            f" on PATH or in JAVA_HOME: {_install_hint('openjdk-17-jre-headless', 'openjdk@17')}"
            " and/or set JAVA_HOME"
        )
    return found


def parse_java_version(text: str) -> int | None:
    """The major version from ``java -version`` output.

    >>> parse_java_version('openjdk version "17.0.15" 2025-04-15')
    17
    >>> parse_java_version('java version "1.8.0_402"')
    8
    >>> parse_java_version('openjdk version "21" 2023-09-19')
    21
    >>> parse_java_version("garbage") is None
    True
    """
    m = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not m:
        return None
    major = int(m.group(1))
    if major == 1 and m.group(2):
        major = int(m.group(2))
    return major


@lru_cache(maxsize=4)
def _java_major(java: str) -> int | None:
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError:
        return None
    return parse_java_version(out.stderr + out.stdout)


def check_java() -> str:
    """The path of a Java 17+ ``java``; a :class:`LocalKafkaError` naming what to install."""
    java = java_executable()
    major = _java_major(java)
    if major is None or major < MIN_JAVA:
        found = f"Java {major}" if major else "a `java` whose version could not be read"
        raise LocalKafkaError(
            f"Java {MIN_JAVA}+ is needed to run the local Kafka broker, found {found} at {java}:"
            f" {_install_hint('openjdk-17-jre-headless', 'openjdk@17')}, or point JAVA_HOME"
            " at a newer JDK"
        )
    return java


def check_maven() -> str:
    """The path of ``mvn``; a :class:`LocalKafkaError` naming what to install."""
    found = shutil.which("mvn")
    if not found:
        raise LocalKafkaError(
            "Maven (`mvn`) is needed once, to fetch the Kafka and Flink connector jars, and it"
            f" was not found on PATH: {_install_hint('maven', 'maven')}"
        )
    return found


# --------------------------------------------------------------------------- jars


def _jar_paths(settings: Settings) -> JarPaths:
    cache = Path(settings.local.cache_dir).expanduser().resolve()
    return JarPaths(
        kafka_libs=cache / f"kafka-{settings.local.kafka_version}" / "libs",
        connector_jar=cache / "flink" / FLINK_CONNECTOR_JAR,
    )


def _stamp_content(settings: Settings) -> dict[str, str]:
    if not POM.is_file():
        raise LocalKafkaError(f"{POM} is missing: run freshrec from a checkout of the project")
    return {
        "pom_sha256": hashlib.sha256(POM.read_bytes()).hexdigest(),
        "kafka_version": settings.local.kafka_version,
        "flink_connector": FLINK_CONNECTOR_VERSION,
    }


def _jars_ready(jars: JarPaths, stamp: Path, want: dict[str, str]) -> bool:
    try:
        have = json.loads(stamp.read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return (
        have == want
        and jars.connector_jar.is_file()
        and any(jars.kafka_libs.glob("kafka_2.13-*.jar"))
    )


def _run_maven(mvn: str, args: list[str], log: Log) -> None:
    cmd = [mvn, "-B", "-f", str(POM), "package", *args]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    assert proc.stdout is not None
    tail: list[str] = []
    downloaded = 0
    last_report = time.monotonic()
    for line in proc.stdout:
        tail = [*tail[-60:], line.rstrip()]
        if "Downloaded from" in line:
            downloaded += 1
            if time.monotonic() - last_report > 2.0:
                log(f"  maven: {downloaded} files downloaded so far...")
                last_report = time.monotonic()
    rc = proc.wait()
    if rc != 0:
        shown = "\n".join(f"    {t}" for t in tail[-40:])
        raise LocalKafkaError(
            f"Maven failed (exit {rc}) fetching the jars; last lines:\n{shown}\n"
            f"  command: {' '.join(cmd)}\n"
            "  (no network? a later run retries; Maven's mirrors and proxies come from"
            " ~/.m2/settings.xml)"
        )
    log(f"  maven: done ({downloaded} files downloaded, the rest from ~/.m2)")


def ensure_jars(settings: Settings, *, log: Log = say) -> JarPaths:
    """Fetch Kafka ``local.kafka_version`` and the Flink connector once; return their paths.

    Cached by a stamp file recording the pom's hash and versions: when it matches, no Maven
    call is made (works offline, and without Maven installed). A changed pom or version
    fetches into a fresh directory that replaces the old one whole, so jars of two versions
    never mix on the classpath.
    """
    jars = _jar_paths(settings)
    version_dir = jars.kafka_libs.parent
    stamp = version_dir / _STAMP
    want = _stamp_content(settings)
    if _jars_ready(jars, stamp, want):
        return jars
    with locked(version_dir.parent / f".kafka-{settings.local.kafka_version}.lock"):
        if _jars_ready(jars, stamp, want):  # another process fetched while we waited
            return jars
        mvn = check_maven()
        log(
            f"kafka: fetching Apache Kafka {settings.local.kafka_version} and"
            f" flink-sql-connector-kafka {FLINK_CONNECTOR_VERSION} with Maven into"
            f" {version_dir.parent} (first run only; ~55 MB)..."
        )
        started = time.monotonic()
        partial = version_dir.parent / f".partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            _run_maven(
                mvn,
                [
                    f"-Dkafka.version={settings.local.kafka_version}",
                    f"-Dflink.connector.version={FLINK_CONNECTOR_VERSION}",
                    f"-Dkafka.libs.dir={partial / 'libs'}",
                    f"-Dflink.dir={partial / 'flink'}",
                ],
                log,
            )
            if not (partial / "flink" / FLINK_CONNECTOR_JAR).is_file():
                raise LocalKafkaError(f"Maven ran but produced no {FLINK_CONNECTOR_JAR}")
            version_dir.mkdir(parents=True, exist_ok=True)
            stamp.unlink(missing_ok=True)
            if jars.kafka_libs.exists():
                shutil.rmtree(jars.kafka_libs)
            os.replace(partial / "libs", jars.kafka_libs)
            jars.connector_jar.parent.mkdir(parents=True, exist_ok=True)
            os.replace(partial / "flink" / FLINK_CONNECTOR_JAR, jars.connector_jar)
            stamp.write_text(json.dumps(want, indent=2) + "\n", "utf-8")
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        n = len(list(jars.kafka_libs.glob("*.jar")))
        log(f"kafka: {n} broker jars and the connector cached in {time.monotonic() - started:.1f}s")
    return jars


# --------------------------------------------------------------------------- broker process


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


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our own exited child (a broker started by this process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _is_our_broker(pid: int, paths: _Paths) -> bool:
    """Is ``pid`` alive and a ``kafka.Kafka`` started with this state dir's config?"""
    proc = _CHILDREN.get(pid)
    if proc is not None:  # started by this process: poll() is authoritative (and reaps)
        return proc.poll() is None
    _reap(pid)
    cmd = cmdline(pid)
    return bool(cmd) and _MAIN_CLASS in cmd.split() and str(paths.config) in cmd


def _read_pid(paths: _Paths) -> int | None:
    try:
        return int(paths.pid.read_text().strip())
    except (OSError, ValueError):
        return None


def _running_pid(paths: _Paths) -> tuple[int | None, str]:
    """(pid of our running broker or None, a note about a stale pid file)."""
    pid = _read_pid(paths)
    if pid is None:
        if paths.pid.exists():
            return None, f"unreadable pid file {paths.pid} ignored"
        return None, ""
    if _is_our_broker(pid, paths):
        return pid, ""
    if cmdline(pid) is None:
        return None, f"stale pid file (process {pid} is gone)"
    return None, f"stale pid file (pid {pid} now belongs to another program)"


def _listening_address(paths: _Paths, settings: Settings) -> str:
    """host:port the broker of this state dir was started with (its server.properties)."""
    try:
        text = paths.config.read_text("utf-8")
    except OSError:
        text = ""
    m = re.search(r"^advertised\.listeners=PLAINTEXT://(\S+)$", text, re.MULTILINE)
    return m.group(1) if m else f"{settings.local.host}:{settings.local.port}"


def _log_tail(paths: _Paths, lines: int = 25) -> str:
    chunks = []
    for f in (paths.out, paths.logs / "server.log"):
        try:
            text = f.read_text("utf-8", "replace").splitlines()
        except OSError:
            continue
        if text:
            chunks.append(f"  --- {f} (last lines)\n" + "\n".join(f"  {t}" for t in text[-lines:]))
    return "\n".join(chunks) or "  (no broker output)"


def _format_storage(java: str, jars: JarPaths, paths: _Paths, log: Log) -> None:
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


def _broker_command(settings: Settings, java: str, jars: JarPaths, paths: _Paths) -> list[str]:
    heap = settings.local.broker_heap
    return [
        java, f"-Xmx{heap}", f"-Xms{heap}",
        "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:+ExplicitGCInvokesConcurrent", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}", f"-Dkafka.logs.dir={paths.logs}",
        "-cp", jars.kafka_classpath, _MAIN_CLASS, str(paths.config),
    ]  # fmt: skip


def _spawn(cmd: list[str], paths: _Paths, bound_to_caller: bool = False) -> int:
    paths.logs.mkdir(parents=True, exist_ok=True)
    with open(paths.out, "ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=paths.state,
            start_new_session=True,  # its own session: no SIGINT/SIGHUP from our terminal
            close_fds=True,
            # A broker started for one command (the demo) stops when that command dies.
            preexec_fn=die_with_parent(signal.SIGTERM) if bound_to_caller else None,
        )
    _CHILDREN[proc.pid] = proc
    tmp = paths.pid.with_suffix(".tmp")
    tmp.write_text(f"{proc.pid}\n")
    os.replace(tmp, paths.pid)
    return proc.pid


def _connect_admin(settings: Settings, timeout_ms: int = 5000) -> KafkaAdminClient:
    from kafka.admin import KafkaAdminClient

    kw = kafka_config.local_broker_kwargs(settings, client_id="freshrec-local-kafka")
    return KafkaAdminClient(**kw, bootstrap_timeout_ms=timeout_ms, request_timeout_ms=timeout_ms)


def _wait_ready(settings: Settings, pid: int, paths: _Paths, timeout_s: float
                ) -> KafkaAdminClient:
    """Wait until the broker answers a metadata request; return a connected admin client."""
    host, port = settings.local.host, settings.local.port
    last_error: Exception | None = None

    def answering() -> KafkaAdminClient | None:
        nonlocal last_error
        if not _is_our_broker(pid, paths):
            proc = _CHILDREN.get(pid)
            code = f" with exit code {proc.returncode}" if proc is not None else ""
            raise LocalKafkaError(
                f"the Kafka broker (pid {pid}) exited during start-up{code}:\n{_log_tail(paths)}"
            )
        if not port_in_use(host, port):
            return None
        try:
            admin = _connect_admin(settings, timeout_ms=3000)
            try:
                admin.list_topics()
                if admin.describe_cluster().get("brokers"):
                    return admin
            except Exception:
                admin.close()
                raise
            admin.close()
        except Exception as exc:  # not ready yet: unreachable, timeouts, ...
            last_error = exc
        return None

    admin = wait_until(answering, timeout_s, interval_s=0.25)
    if admin is None:
        raise LocalKafkaError(
            f"the Kafka broker (pid {pid}) did not answer on {host}:{port} within"
            f" {settings.local.start_timeout_s:.0f}s (local.start_timeout_s); last error:"
            f" {last_error!r}\n{_log_tail(paths)}"
        )
    return admin


# --------------------------------------------------------------------------- topics


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


# --------------------------------------------------------------------------- up / down / status


def broker_up(settings: Settings, *, log: Log = say, bound_to_caller: bool = False
              ) -> BrokerInfo:
    """Start the local broker if it is not running, then make sure the topics exist.

    ``bound_to_caller``: a broker started here gets SIGTERM when this process ends, however
    it ends (else it runs until ``broker_down``)."""
    started = time.monotonic()
    paths = _Paths.of(settings)
    paths.state.mkdir(parents=True, exist_ok=True)
    with locked(paths.lock):
        pid, note = _running_pid(paths)
        if pid is not None:
            bootstrap = _listening_address(paths, settings)
            log(f"kafka: already running (pid {pid}) on {bootstrap}")
            configured = f"{settings.local.host}:{settings.local.port}"
            if bootstrap != configured:
                log(
                    f"kafka: note: configured for {configured};"
                    " run `freshrec kafka down` first to move it"
                )
                settings = _with_address(settings, bootstrap)
            try:
                admin = _connect_admin(settings)
            except Exception as exc:
                raise LocalKafkaError(
                    f"the broker (pid {pid}) is running but does not answer on {bootstrap}:"
                    f" {exc!r}; see {paths.logs / 'server.log'}, or `freshrec kafka down` and"
                    " `up` again"
                ) from exc
            already = True
        else:
            if note:
                log(f"kafka: {note}; starting a new broker")
                paths.pid.unlink(missing_ok=True)
            java = check_java()
            jars = ensure_jars(settings, log=log)
            loc = settings.local
            for port, key in (
                (loc.port, "local.port"),
                (loc.controller_port, "local.controller_port"),
            ):
                if port_in_use(loc.host, port):
                    raise LocalKafkaError(
                        f"{loc.host}:{port} is already in use by another program (not a broker"
                        f" of {paths.state}); stop it or choose another port with --set {key}=..."
                    )
            paths.data.mkdir(parents=True, exist_ok=True)
            paths.config.write_text(render_server_properties(settings, paths.data), "utf-8")
            _format_storage(java, jars, paths, log)
            pid = _spawn(_broker_command(settings, java, jars, paths), paths, bound_to_caller)
            bootstrap = f"{loc.host}:{loc.port}"
            log(f"kafka: starting broker (pid {pid}) on {bootstrap}, logs in {paths.logs}")
            try:
                admin = _wait_ready(settings, pid, paths, loc.start_timeout_s)
            except BaseException:
                _stop(pid, paths, timeout_s=10, log=lambda _m: None)
                raise
            already = False
        try:
            created = ensure_topics(settings, admin, log=log)
        except LocalKafkaError:
            raise
        except Exception as exc:  # kafka-python errors: timeouts, policy violations, ...
            raise LocalKafkaError(f"setting up the topics failed: {exc!r}") from exc
        finally:
            admin.close()
    if created:
        log(f"kafka: created topics {', '.join(created)}")
    took = time.monotonic() - started
    if not already:
        log(f"kafka: up on {bootstrap} in {took:.1f}s")
    return BrokerInfo(
        pid=pid,
        bootstrap=bootstrap,
        state_dir=paths.state,
        log_file=paths.logs / "server.log",
        already_running=already,
        started_in_s=took,
        topics_created=tuple(created),
    )


def _with_address(settings: Settings, address: str) -> Settings:
    host, _, port = address.rpartition(":")
    return settings.replace("local", host=host, port=int(port))


def _stop(pid: int, paths: _Paths, *, timeout_s: float, log: Log) -> None:
    if _is_our_broker(pid, paths):
        with contextlib.suppress(psutil.NoSuchProcess):
            stop_processes([psutil.Process(pid)], timeout_s=timeout_s, what="kafka", log=log)
    proc = _CHILDREN.pop(pid, None)
    if proc is not None:
        with contextlib.suppress(Exception):
            proc.wait(timeout=1)
    paths.pid.unlink(missing_ok=True)


def broker_down(settings: Settings, *, timeout_s: float = 30.0, log: Log = say) -> bool:
    """Stop the local broker (SIGTERM, SIGKILL after ``timeout_s``). True if it was running."""
    paths = _Paths.of(settings)
    if not paths.state.is_dir():
        log("kafka: was not running")
        return False
    with locked(paths.lock):
        pid, note = _running_pid(paths)
        if pid is None:
            paths.pid.unlink(missing_ok=True)
            log(f"kafka: was not running{f' ({note}, removed)' if note else ''}")
            return False
        _stop(pid, paths, timeout_s=timeout_s, log=log)
    log(f"kafka: stopped (pid {pid})")
    return True


def broker_status(settings: Settings) -> BrokerStatus:
    """Running or stopped, and the topics with their partitions and non-default configs."""
    paths = _Paths.of(settings)
    pid, note = _running_pid(paths)
    bootstrap = _listening_address(paths, settings)
    if pid is None:
        return BrokerStatus(False, None, bootstrap, paths.state, note=note)
    try:
        admin = _connect_admin(_with_address(settings, bootstrap))
        try:
            topics = tuple(describe_topics(admin))
        finally:
            admin.close()
    except Exception as exc:
        return BrokerStatus(True, pid, bootstrap, paths.state, note=f"not answering yet: {exc!r}")
    return BrokerStatus(True, pid, bootstrap, paths.state, topics=topics, note=note)


# --------------------------------------------------------------------------- CLI


def _cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    broker_up(settings)
    return 0


def _cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    broker_down(settings)
    return 0


def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    st = broker_status(settings)
    if not st.running:
        print(f"kafka: stopped (state in {st.state_dir})" + (f"; {st.note}" if st.note else ""))
        return 3
    print(f"kafka: running (pid {st.pid}) on {st.bootstrap}, state in {st.state_dir}")
    if st.note:
        print(f"kafka: {st.note}")
    print(f"topics ({len(st.topics)}):")
    for t in st.topics:
        print(f"  {t.describe()}")
    return 0


def _cmd_jars(args: argparse.Namespace, settings: Settings) -> int:
    jars = ensure_jars(settings)
    print(f"kafka classpath:  {jars.kafka_classpath}")
    print(f"flink connector:  {jars.connector_jar}")
    return 0


def _guard(func: Callable[[argparse.Namespace, Settings], int]) -> Any:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        try:
            return func(args, settings)
        except (LocalKafkaError, kafka_config.KafkaConfigError) as exc:
            print(f"freshrec kafka: error: {exc}", file=sys.stderr)
            return 1

    return run


def _add_commands(sub: Any) -> None:
    sub.add_parser(
        "up", help="start the broker (if not running) and create the freshrec topics"
    ).set_defaults(func=_guard(_cmd_up))
    sub.add_parser("down", help="stop the broker").set_defaults(func=_guard(_cmd_down))
    sub.add_parser(
        "status", help="running or stopped, and the topics (exit 3 when stopped)"
    ).set_defaults(func=_guard(_cmd_status))
    sub.add_parser("jars", help="fetch the jars if needed and print their paths").set_defaults(
        func=_guard(_cmd_jars)
    )


_DESCRIPTION = (
    "A real Apache Kafka broker on local.host:local.port (default 127.0.0.1:9092), data and"
    " logs in local.state_dir, jars fetched once with Maven into local.cache_dir."
)


def register(subparsers: Any) -> None:
    """Add ``freshrec kafka up|down|status|jars``."""
    parser = subparsers.add_parser(
        "kafka",
        help="run a local single-node Kafka broker (KRaft) for development",
        description=_DESCRIPTION,
    )
    _add_commands(parser.add_subparsers(dest="kafka_command", required=True))


def main(argv: list[str] | None = None) -> int:
    """``python -m freshrec.local_kafka [--config F] [--set k=v] up|down|status|jars``.

    The same as ``freshrec kafka ...``, without loading the other subcommands.
    """
    from freshrec.settings import SettingsError, load_settings
    from freshrec.settings_args import add_settings_arguments

    parser = argparse.ArgumentParser(
        prog="python -m freshrec.local_kafka", description=_DESCRIPTION
    )
    add_settings_arguments(parser)
    _add_commands(parser.add_subparsers(dest="kafka_command", required=True))
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config, overrides=args.overrides)
    except SettingsError as exc:
        print(f"freshrec: bad setting: {exc}", file=sys.stderr)
        return 2
    return int(args.func(args, settings) or 0)


if __name__ == "__main__":
    sys.exit(main())
