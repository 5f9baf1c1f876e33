"""Where the job's jars are: the Flink Kafka connector fetched into ``local.cache_dir`` (by
``devstack.jars.ensure_jars``) and, beside it, the broker's own jars. Paths only: nothing
here fetches or builds, so the job can find its connector without the dev stack."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from freshrec_common.settings import Settings

FLINK_CONNECTOR_VERSION = "5.0.0-2.2"
FLINK_CONNECTOR_JAR = f"flink-sql-connector-kafka-{FLINK_CONNECTOR_VERSION}.jar"


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


def jar_paths(settings: Settings) -> JarPaths:
    """The jar paths under ``local.cache_dir``, whether fetched yet or not."""
    cache = Path(settings.local.cache_dir).expanduser().resolve()
    return JarPaths(
        kafka_libs=cache / f"kafka-{settings.local.kafka_version}" / "libs",
        connector_jar=cache / "flink" / FLINK_CONNECTOR_JAR,
    )
