"""The broker and connector jars, fetched once with Maven (``deploy/local/pom.xml``) into
``local.cache_dir``; later calls make no Maven call and work offline.

Layout::

    <cache_dir>/kafka-<version>/libs/*.jar      broker classpath (java -cp '<libs>/*')
    <cache_dir>/kafka-<version>/.fetched        stamp: what Maven fetched, from which pom
    <cache_dir>/flink/flink-sql-connector-kafka-<version>.jar
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from devstack.prerequisites import LocalKafkaError, check_maven
from devstack.processes import Log, locked, say
from freshrec_common.jars import FLINK_CONNECTOR_JAR, FLINK_CONNECTOR_VERSION, JarPaths, jar_paths

if TYPE_CHECKING:
    from freshrec_common.settings import Settings

DEPLOY_DIR = Path(__file__).resolve().parent.parent / "deploy" / "local"
POM = DEPLOY_DIR / "pom.xml"
_STAMP = ".fetched"


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
    jars = jar_paths(settings)
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
