"""Local Kafka helpers that need no JVM and no broker: prerequisites, jar cache, pid files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.jars import POM, _stamp_content, ensure_jars
from devstack.kafka_broker import _running_pid, broker_down, broker_status, broker_up
from devstack.kafka_broker_layout import (
    KAFKA_JVM_PERFORMANCE_OPTS,
    LOG4J2_CONFIG,
    BrokerPaths,
    broker_command,
    new_cluster_id,
    render_server_properties,
)
from devstack.kafka_topics import COMPACTED_TOPIC_CONFIGS, default_topics
from devstack.prerequisites import LocalKafkaError, _java_major, check_java, check_maven
from freshrec.kafka import _cmd_status, register
from freshrec_common.jars import JarPaths, jar_paths
from freshrec_common.settings import load_settings


@pytest.fixture
def settings(tmp_path: Path):
    return load_settings(
        env={},
        overrides=[
            f"local.state_dir={tmp_path / 'state'}",
            f"local.cache_dir={tmp_path / 'cache'}",
            "local.port=29092",
            "local.controller_port=29093",
        ],
    )


@pytest.fixture
def no_tools(monkeypatch, tmp_path: Path):
    """A PATH with nothing on it, and no JAVA_HOME."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    _java_major.cache_clear()
    return empty


def _fake_java(bin_dir: Path, version_line: str) -> None:
    java = bin_dir / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(0o755)


def test_missing_java_names_the_package_to_install(no_tools):
    with pytest.raises(LocalKafkaError) as exc:
        check_java()
    msg = str(exc.value)
    assert "Java 17+" in msg
    assert "apt-get install openjdk-17-jre-headless" in msg
    assert "JAVA_HOME" in msg


def test_old_java_is_refused_with_its_version(no_tools):
    _fake_java(no_tools, 'openjdk version "11.0.20" 2023-07-18')
    with pytest.raises(LocalKafkaError) as exc:
        check_java()
    assert "found Java 11" in str(exc.value)
    assert "openjdk-17-jre-headless" in str(exc.value)


def test_java_17_from_java_home_is_accepted(no_tools, tmp_path, monkeypatch):
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    _fake_java(home / "bin", 'openjdk version "17.0.15" 2025-04-15')
    monkeypatch.setenv("JAVA_HOME", str(home))
    assert check_java() == str(home / "bin" / "java")


def test_missing_maven_names_the_package_to_install(no_tools):
    with pytest.raises(LocalKafkaError) as exc:
        check_maven()
    assert "apt-get install maven" in str(exc.value)


def _fill_cache(settings, stamp: dict | None) -> JarPaths:
    jars = jar_paths(settings)
    jars.kafka_libs.mkdir(parents=True)
    (jars.kafka_libs / f"kafka_2.13-{settings.local.kafka_version}.jar").write_bytes(b"")
    jars.connector_jar.parent.mkdir(parents=True)
    jars.connector_jar.write_bytes(b"")
    if stamp is not None:
        (jars.kafka_libs.parent / ".fetched").write_text(json.dumps(stamp))
    return jars


def test_cached_jars_need_no_maven(settings, no_tools):
    jars = _fill_cache(settings, _stamp_content(settings))
    messages: list[str] = []
    got = ensure_jars(settings, log=messages.append)
    assert got == jars
    assert messages == []  # no Maven run, nothing to report
    assert got.kafka_libs == Path(settings.local.cache_dir) / "kafka-4.3.1" / "libs"
    assert got.connector_jar.name == "flink-sql-connector-kafka-5.0.0-2.2.jar"
    assert got.kafka_classpath.endswith("/libs/*")
    assert got.connector_url.startswith("file:///")


@pytest.mark.parametrize(
    "stamp",
    [None, {"pom_sha256": "0" * 64, "kafka_version": "4.3.1", "flink_connector": "5.0.0-2.2"}],
    ids=["no-stamp", "pom-changed"],
)
def test_stale_or_missing_stamp_fetches_again(settings, no_tools, stamp):
    _fill_cache(settings, stamp)
    with pytest.raises(LocalKafkaError, match="Maven"):
        ensure_jars(settings, log=lambda _m: None)


def test_pom_pins_versions_and_names_no_registry_host():
    pom = POM.read_text()
    assert "<kafka.version>4.3.1</kafka.version>" in pom
    assert "<dependency.plugin.version>3.8.1</dependency.plugin.version>" in pom
    assert "<flink.connector.version>5.0.0-2.2</flink.connector.version>" in pom
    assert "log4j-slf4j2-impl" in pom and "log4j-core" in pom
    assert "<repositories>" not in pom and "<url>" not in pom
    assert LOG4J2_CONFIG.is_file()


def test_server_properties_single_node_on_loopback(settings, tmp_path):
    text = render_server_properties(settings, tmp_path / "data")
    props = dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29092"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:29093"
    assert props["log.dirs"] == str(tmp_path / "data")
    for key, value in {
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
    }.items():
        assert props[key] == value
    assert "0.0.0.0" not in text


@pytest.mark.parametrize(
    ("env", "expected"),
    [("", KAFKA_JVM_PERFORMANCE_OPTS.split()), ("-XX:+UseSerialGC", ["-XX:+UseSerialGC"])],
)
def test_broker_jvm_flags_are_kafkas_unless_the_environment_replaces_them(
    settings, monkeypatch, env, expected
):
    monkeypatch.setenv("KAFKA_JVM_PERFORMANCE_OPTS", env)
    jars = jar_paths(settings)
    cmd = broker_command(settings, "java", jars, BrokerPaths.of(settings))
    heap = settings.local.broker_heap
    assert cmd[:3 + len(expected)] == ["java", f"-Xmx{heap}", f"-Xms{heap}", *expected]
    assert cmd[-2:] == ["kafka.Kafka", str(BrokerPaths.of(settings).config)]


def test_default_topics_and_their_configs(settings):
    assert default_topics(settings) == {
        "freshrec.events": {},
        "freshrec.events.dlq": {"max.message.bytes": "4194304"},
        "freshrec.recommendations": dict(COMPACTED_TOPIC_CONFIGS),
        "freshrec.item-embeddings": dict(COMPACTED_TOPIC_CONFIGS),
    }


def test_compacted_topic_configs_compact_within_minutes():
    assert dict(COMPACTED_TOPIC_CONFIGS) == {
        "cleanup.policy": "compact",
        "segment.ms": "60000",
        "segment.bytes": "16777216",
        "min.cleanable.dirty.ratio": "0.1",
        "min.compaction.lag.ms": "0",
        "max.compaction.lag.ms": "300000",
        "delete.retention.ms": "86400000",
    }
    cfg = COMPACTED_TOPIC_CONFIGS
    assert int(cfg["min.compaction.lag.ms"]) <= int(cfg["max.compaction.lag.ms"])
    # Dirty records wait for the roll of the active segment, which the cleaner never touches.
    assert int(cfg["segment.ms"]) <= int(cfg["max.compaction.lag.ms"])
    # Tombstones outlive any wait for compaction by far (consumers must get to see them).
    assert int(cfg["delete.retention.ms"]) >= 24 * 3600 * 1000
    with pytest.raises(TypeError):
        COMPACTED_TOPIC_CONFIGS["segment.ms"] = "1"  # type: ignore[index]


def test_cluster_ids_are_unique_kraft_ids():
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_no_pid_file_means_stopped(settings):
    paths = BrokerPaths.of(settings)
    assert _running_pid(paths) == (None, "")
    st = broker_status(settings)
    assert (st.running, st.pid, st.bootstrap) == (False, None, "127.0.0.1:29092")


def test_pid_file_of_a_dead_process_is_stale(settings):
    paths = BrokerPaths.of(settings)
    paths.state.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    paths.pid.write_text(f"{dead.pid}\n")
    pid, note = _running_pid(paths)
    assert pid is None and "is gone" in note
    messages: list[str] = []
    assert broker_down(settings, log=messages.append) is False
    assert messages == [
        f"kafka: was not running (stale pid file (process {dead.pid} is gone), removed)"
    ]
    assert not paths.pid.exists()


def test_pid_file_of_another_program_is_stale_and_left_alone(settings):
    paths = BrokerPaths.of(settings)
    paths.state.mkdir(parents=True)
    paths.pid.write_text(f"{os.getpid()}\n")  # this pytest process: alive, not a broker
    pid, note = _running_pid(paths)
    assert pid is None and "another program" in note
    assert broker_down(settings, log=lambda _m: None) is False  # and we are still here


def test_garbage_pid_file_is_ignored(settings):
    paths = BrokerPaths.of(settings)
    paths.state.mkdir(parents=True)
    paths.pid.write_text("not a pid\n")
    pid, note = _running_pid(paths)
    assert pid is None and "unreadable" in note


def test_cli_registers_kafka_subcommands():
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    for cmd in ("up", "down", "status", "jars"):
        args = parser.parse_args(["kafka", cmd])
        assert callable(args.func)


def test_status_command_exit_code_when_stopped(settings, capsys):
    import argparse

    assert _cmd_status(argparse.Namespace(), settings) == 3
    assert capsys.readouterr().out.startswith("kafka: stopped")


def test_up_without_java_fails_before_starting_anything(settings, no_tools):
    with pytest.raises(LocalKafkaError, match="openjdk-17-jre-headless"):
        broker_up(settings, log=lambda _m: None)
    assert not BrokerPaths.of(settings).pid.exists()


def test_up_without_maven_and_without_cached_jars_names_maven(settings, no_tools):
    _fake_java(no_tools, 'openjdk version "17.0.15" 2025-04-15')
    with pytest.raises(LocalKafkaError, match="apt-get install maven"):
        broker_up(settings, log=lambda _m: None)
    assert not BrokerPaths.of(settings).pid.exists()


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    from devstack.processes import _ephemeral_low, free_ports

    first, second = free_ports(3, avoid=(9092,)), free_ports(3)
    ports = first + second
    assert len(set(ports)) == 6, "a port was handed out twice"
    assert all(15000 <= p < min(_ephemeral_low(), 32768) for p in ports)
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))
