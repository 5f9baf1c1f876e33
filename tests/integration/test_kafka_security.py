"""Kafka security end to end: a real broker with a TLS + SASL listener and certificates made
here, reached by the admin client, ``freshrec produce``/``tail`` and the Flink job.

One broker for the module (KRaft, combined node) with three loopback listeners:

* CONTROLLER (PLAINTEXT) for the KRaft quorum,
* PLAINTEXT, inter-broker and the readiness probe of :mod:`devstack.kafka_broker`,
* SASL_SSL with PLAIN (user ``alice``) and SCRAM-SHA-512 (user ``bob``, created when the
  storage is formatted); its certificate is signed by a CA generated with ``keytool``.

Every client under test only gets the SASL_SSL address, the CA as a PEM file and the
password through ``FRESHREC_KAFKA_SASL_PASSWORD``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import TopicPartition

from devstack.jars import ensure_jars
from devstack.kafka_broker import _spawn, _stop, _wait_ready
from devstack.kafka_broker_layout import (
    LOG4J2_CONFIG,
    BrokerPaths,
    broker_command,
    new_cluster_id,
    render_server_properties,
)
from devstack.kafka_topics import create_topic
from devstack.prerequisites import check_java, java_executable
from devstack.processes import free_ports, process_tree, stop_processes
from freshrec.generator import generate_events
from freshrec_common import kafka_config
from freshrec_common.jars import JarPaths
from freshrec_common.settings import Settings, load_settings
from schemas.events import Event
from schemas.recommendation import Recommendation
from tests.integration.job_harness import (
    REPO_ROOT,
    JobProcess,
    Record,
    job_settings,
    latest_by_key,
)
from tests.kafka_fixtures import local_broker_settings

FRESHREC_CLI = Path(sys.executable).with_name("freshrec")
STORE_PASSWORD = "store-secret"
PLAIN_USER, PLAIN_PASSWORD = "alice", "alice-secret"
# Quotes and a backslash: the Java client's JAAS line must escape them.
SCRAM_USER, SCRAM_PASSWORD = "bob", 'bob "s3cr\\et"'
PASSWORD_ENV = "FRESHREC_KAFKA_SASL_PASSWORD"


# --------------------------------------------------------------------------- certificates


def _keytool(*args: str) -> None:
    # keytool ships beside java in every JDK (java_executable() may be a /usr/bin symlink).
    keytool = Path(java_executable()).resolve().with_name("keytool")
    out = subprocess.run([str(keytool), *args], capture_output=True, text=True, check=False,
                         timeout=120)
    if out.returncode != 0:
        raise AssertionError(f"keytool {args[0]} failed:\n{out.stdout}{out.stderr}")


@dataclass(frozen=True)
class Certificates:
    ca_pem: Path
    broker_keystore: Path


def make_certificates(directory: Path) -> Certificates:
    """A self-signed CA and a broker certificate for 127.0.0.1/localhost signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_store, ca_pem = directory / "ca.p12", directory / "ca.pem"
    keystore, csr = directory / "broker.p12", directory / "broker.csr"
    signed = directory / "broker.pem"
    common = ["-storetype", "PKCS12", "-storepass", STORE_PASSWORD]
    _keytool("-genkeypair", "-alias", "ca", "-keyalg", "RSA", "-keysize", "2048",
             "-validity", "2", "-dname", "CN=freshrec-test-ca", "-ext", "bc:c=ca:true",
             "-ext", "ku:c=keyCertSign,cRLSign", "-keystore", str(ca_store), *common)
    _keytool("-exportcert", "-rfc", "-alias", "ca", "-file", str(ca_pem),
             "-keystore", str(ca_store), *common)
    _keytool("-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048",
             "-validity", "2", "-dname", "CN=localhost", "-keystore", str(keystore), *common)
    _keytool("-certreq", "-alias", "broker", "-file", str(csr), "-keystore", str(keystore),
             *common)
    # The SAN is what both TLS clients check (hostname verification is on in both).
    _keytool("-gencert", "-rfc", "-alias", "ca", "-infile", str(csr), "-outfile", str(signed),
             "-validity", "2", "-ext", "san=ip:127.0.0.1,dns:localhost",
             "-ext", "ku:c=digitalSignature,keyEncipherment", "-ext", "eku=serverAuth",
             "-keystore", str(ca_store), *common)
    # The CA first, so that the signed reply can be chained to it.
    _keytool("-importcert", "-noprompt", "-alias", "ca", "-file", str(ca_pem),
             "-keystore", str(keystore), *common)
    _keytool("-importcert", "-alias", "broker", "-file", str(signed),
             "-keystore", str(keystore), *common)
    return Certificates(ca_pem=ca_pem, broker_keystore=keystore)


# --------------------------------------------------------------------------- broker


@dataclass(frozen=True)
class SecureBroker:
    """The running broker: its PLAINTEXT settings, SASL_SSL address and the CA file."""

    plaintext: Settings
    sasl_ssl_bootstrap: str
    ca_pem: Path
    pid: int

    def overrides(self, mechanism: str, user: str) -> list[str]:
        """``--set`` values for a client of the SASL_SSL listener (password not included)."""
        return [
            f"kafka.bootstrap_servers={self.sasl_ssl_bootstrap}",
            "kafka.security_protocol=SASL_SSL",
            f"kafka.sasl_mechanism={mechanism}",
            f"kafka.sasl_username={user}",
            f"kafka.ssl_cafile={self.ca_pem}",
            f"local.cache_dir={self.plaintext.local.cache_dir}",
        ]

    def settings(self, mechanism: str, user: str, password: str) -> Settings:
        """Client settings, the password given the way an operator would: the environment."""
        return load_settings(env={PASSWORD_ENV: password},
                             overrides=self.overrides(mechanism, user))


def _jaas(module: str, **options: str) -> str:
    return f"{module} required " + " ".join(f'{k}="{v}"' for k, v in options.items()) + ";"


def secure_listener_properties(sasl_port: int, certs: Certificates, host: str = "127.0.0.1"
                               ) -> dict[str, str]:
    """What the broker needs on top of ``render_server_properties`` for a SASL_SSL listener."""
    prefix = "listener.name.sasl_ssl."
    return {
        "listeners": f"{{plain}},SASL_SSL://{host}:{sasl_port}",
        "advertised.listeners": f"{{advertised}},SASL_SSL://{host}:{sasl_port}",
        "listener.security.protocol.map": "{map},SASL_SSL:SASL_SSL",
        f"{prefix}sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-512",
        # PLAIN users live in the JAAS line; SCRAM users in the metadata log (format time).
        f"{prefix}plain.sasl.jaas.config": _jaas(
            "org.apache.kafka.common.security.plain.PlainLoginModule",
            **{f"user_{PLAIN_USER}": PLAIN_PASSWORD}),
        f"{prefix}scram-sha-512.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        f"{prefix}ssl.keystore.type": "PKCS12",
        f"{prefix}ssl.keystore.location": str(certs.broker_keystore),
        f"{prefix}ssl.keystore.password": STORE_PASSWORD,
        f"{prefix}ssl.key.password": STORE_PASSWORD,
    }


def render_secure_properties(settings: Settings, data_dir: Path, sasl_port: int,
                             certs: Certificates) -> str:
    """The local broker's server.properties with the listener keys extended (later keys win)."""
    base = render_server_properties(settings, data_dir)
    current = dict(line.split("=", 1) for line in base.splitlines()
                   if "=" in line and not line.startswith("#"))
    extra = secure_listener_properties(sasl_port, certs)
    extra["listeners"] = extra["listeners"].format(plain=current["listeners"])
    extra["advertised.listeners"] = extra["advertised.listeners"].format(
        advertised=current["advertised.listeners"])
    extra["listener.security.protocol.map"] = extra["listener.security.protocol.map"].format(
        map=current["listener.security.protocol.map"])
    lines = [f"{k}={v}" for k, v in extra.items()]
    return base + "# SASL_SSL listener of test_kafka_security\n" + "\n".join(lines) + "\n"


def format_storage_with_scram(java: str, jars: JarPaths, config: Path, logs: Path,
                              users: Mapping[str, str]) -> None:
    """``kafka-storage format --add-scram 'SCRAM-SHA-512=[name=..,password=..]'``."""
    scram = [arg for user, password in users.items()
             for arg in ("--add-scram", f'SCRAM-SHA-512=[name={user},password="{password}"]')]
    cmd = [java, "-Xmx256m", "-cp", jars.kafka_classpath,
           f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}", f"-Dkafka.logs.dir={logs}",
           "kafka.tools.StorageTool", "format", "-t", new_cluster_id(), "-c", str(config),
           *scram]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    if out.returncode != 0:
        raise AssertionError(f"kafka-storage format failed:\n{out.stdout}{out.stderr}")


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    root = tmp_path_factory.mktemp("secure-kafka")
    certs = make_certificates(root / "certs")
    port, controller_port, sasl_port = free_ports(3)
    settings = local_broker_settings(root / "state", [
        f"local.port={port}", f"local.controller_port={controller_port}",
        f"kafka.bootstrap_servers=127.0.0.1:{port}"])
    # Reuse the local broker's layout, command line and readiness probe (which talks to the
    # PLAINTEXT listener); only the listener properties and the SCRAM users are ours.
    paths = BrokerPaths.of(settings)
    paths.data.mkdir(parents=True)
    paths.logs.mkdir(parents=True)
    paths.config.write_text(render_secure_properties(settings, paths.data, sasl_port, certs))
    java, jars = check_java(), ensure_jars(settings)
    format_storage_with_scram(java, jars, paths.config, paths.logs, {SCRAM_USER: SCRAM_PASSWORD})
    pid = _spawn(broker_command(settings, java, jars, paths), paths)
    try:
        _wait_ready(settings, pid, paths, settings.local.start_timeout_s).close()
        yield SecureBroker(settings, f"127.0.0.1:{sasl_port}", certs.ca_pem, pid)
    finally:
        tree = process_tree(pid)
        _stop(pid, paths, timeout_s=20, log=print)  # the broker: stopped and reaped
        stop_processes(tree, timeout_s=5, what="secure broker", log=print)  # what it left


def cli(broker: SecureBroker, mechanism: str, user: str, password: str, *argv: str,
        timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """``freshrec --set ... ARGV`` as a subprocess, the password in its environment only."""
    sets = [arg for o in broker.overrides(mechanism, user) for arg in ("--set", o)]
    return subprocess.run([str(FRESHREC_CLI), *sets, *argv], capture_output=True, text=True,
                          env={**os.environ, PASSWORD_ENV: password}, cwd=REPO_ROOT,
                          timeout=timeout_s, check=False)


MECHANISMS = [("PLAIN", PLAIN_USER, PLAIN_PASSWORD), ("SCRAM-SHA-512", SCRAM_USER, SCRAM_PASSWORD)]


@pytest.mark.parametrize(("mechanism", "user", "password"), MECHANISMS)
def test_topic_round_trip_and_wrong_password(secure_broker: SecureBroker, mechanism: str,
                                             user: str, password: str) -> None:
    settings = secure_broker.settings(mechanism, user, password)
    assert settings.kafka.sasl_password == password  # taken from the environment
    topic = f"sec.{mechanism.lower()}.{time.monotonic_ns()}"
    assert create_topic(settings, topic, partitions=1)
    producer = kafka_config.producer(settings, acks="all")
    try:
        producer.send(topic, key=b"k", value=user.encode()).get(timeout=30)
    finally:
        producer.close()
    # The partition assigned by hand: no subscription waiting on topic metadata.
    consumer = kafka_config.consumer(settings, auto_offset_reset="earliest",
                                     consumer_timeout_ms=90_000)  # SSL start-up on a loaded machine
    try:
        consumer.assign([TopicPartition(topic, 0)])
        got = next(consumer, None)
        assert got is not None and (got.key, got.value) == (b"k", user.encode())
    finally:
        consumer.close()

    # A wrong password fails at once, naming the login, not after a 30 s bootstrap timeout.
    started = time.monotonic()
    with pytest.raises(kafka_config.KafkaAuthError, match=f"SASL {mechanism} login of '{user}'"):
        kafka_config.admin_client(secure_broker.settings(mechanism, user, "wrong"))
    assert time.monotonic() - started < 20  # the bootstrap timeout is 30 s


def test_tls_is_verified(secure_broker: SecureBroker) -> None:
    """Without the test CA the broker's certificate is not trusted: nothing connects."""
    settings = secure_broker.settings("PLAIN", PLAIN_USER, PLAIN_PASSWORD)
    untrusting = settings.replace("kafka", ssl_cafile="")
    with pytest.raises(kafka_config.KafkaUnreachable, match=r"check kafka\.ssl_cafile"):
        kafka_config.admin_client(untrusting, bootstrap_timeout_ms=2000)


def test_cli_wrong_password_exits_with_the_reason(secure_broker: SecureBroker) -> None:
    started = time.monotonic()
    out = cli(secure_broker, "PLAIN", PLAIN_USER, "wrong", "produce", "--generator",
              "--count", "5", "--topic", "sec.never-written", "--no-progress", timeout_s=60)
    assert out.returncode != 0
    assert f"freshrec: kafka: the broker at {secure_broker.sasl_ssl_bootstrap}" in out.stderr, (
        out.stderr[-2000:])
    assert "Traceback" not in out.stderr
    assert f"SASL PLAIN login of '{PLAIN_USER}'" in out.stderr
    assert time.monotonic() - started < 30


@pytest.mark.slow
def test_job_and_clis_over_sasl_ssl(secure_broker: SecureBroker, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The job (SCRAM-SHA-512, exactly-once) between ``freshrec produce`` and
    ``freshrec tail`` (PLAIN), every client on the SASL_SSL listener."""
    # The job, job_settings and the harness's readers load settings from the environment.
    monkeypatch.setenv(PASSWORD_ENV, SCRAM_PASSWORD)
    scram = secure_broker.settings("SCRAM-SHA-512", SCRAM_USER, SCRAM_PASSWORD)
    settings, overrides = job_settings(
        scram, tmp_path, [*secure_broker.overrides("SCRAM-SHA-512", SCRAM_USER),
                          "job.parallelism=1", "job.delivery=exactly-once",
                          "model.exploration=0.0"])
    assert settings.kafka.security_protocol == "SASL_SSL"
    job = JobProcess(settings, overrides, tmp_path / "job.log").start()
    n_users, n_items = 20, 200

    def produce(count: int, seed: int) -> list[Event]:
        out = cli(secure_broker, "PLAIN", PLAIN_USER, PLAIN_PASSWORD, "produce", "--generator",
                  "--count", str(count), "--seed", str(seed), "--users", str(n_users),
                  "--items", str(n_items), "--topic", settings.topics.events, "--no-progress")
        assert out.returncode == 0, out.stderr[-2000:]
        assert f"sent {count}, acked {count}, failed 0" in out.stdout
        run_id = re.search(rf"event ids g{seed}-(\w+)-\*, new to this run", out.stdout)
        assert run_id, out.stdout
        return list(generate_events(count, seed=seed, n_users=n_users, n_items=n_items,
                                    run_id=run_id[1]))

    def current(record: Record | None, last_event_id: str) -> bool:
        """A list with items, made after the user's last event."""
        if record is None or record.value is None:
            return False
        rec = Recommendation.from_json(record.value)
        return bool(rec.items) and rec.last_event_id == last_event_id

    try:
        # Round 1 fills the item changelog, read back as the scorer's replica (with
        # exactly-once it shows at checkpoints, so round 1's own lists may still be empty).
        first = produce(400, seed=7)
        job.wait_for(settings.topics.item_embeddings, lambda rs: len(rs) > 0, timeout_s=180,
                     what="item embeddings")
        # Round 2: the same users and items, new events; every user's list must have content.
        second = produce(300, seed=8)
        last = {e.user_id: e.event_id for e in second if e.user_id}
        users = set(last)
        items = {e.item_id for e in first + second if e.item_id}
        records = job.wait_for(
            settings.topics.recommendations,
            lambda rs: all(current(latest_by_key(rs).get(u), last[u]) for u in users),
            timeout_s=180, what="a non-empty, current list for every user of round 2")
        for key, record in latest_by_key(records).items():
            assert key in users | {e.user_id for e in first}
            assert record.value is not None
            rec = Recommendation.from_json(record.value)
            assert rec.user_id == key
            assert all(it.item_id in items and it.reason for it in rec.items)
    finally:
        job.stop()

    # freshrec tail (PLAIN) shows the same lists: read up to the latest one seen above.
    user = sorted(users)[0]
    seen = sum(r.key == user.encode() for r in records)
    # --max ends it; the idle timeout covers SSL start-up on a loaded machine (20 s did not).
    out = cli(secure_broker, "PLAIN", PLAIN_USER, PLAIN_PASSWORD, "tail", "--from-beginning",
              "--user", user, "--max", str(seen), "--timeout", "90",
              "--topic", settings.topics.recommendations)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"({seen} records from " in out.stderr
    latest = out.stdout.split(f"user {user}  seq ")[-1]
    assert f"(after {last[user]} @" in latest, out.stdout
    assert "   1. " in latest, out.stdout

