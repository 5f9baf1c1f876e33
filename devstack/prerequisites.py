"""What the dev stack needs on this machine: Java 17+ (the broker and Flink) and Maven (the
jars, fetched once); each check names what to install."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

MIN_JAVA = 17


class LocalKafkaError(RuntimeError):
    """The local broker could not be set up, started or stopped; the message says why."""


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
