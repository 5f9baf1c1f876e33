"""The job's two small Java jars, compiled here once from ``flink_jobs/java`` and cached.

- ``freshrec-flink-glue``: Kafka record (de)serializers against the shaded connector; it
  goes with the job (``pipeline.jars``).
- ``freshrec-flink-metrics``: the classes Python calls through pemja: a double-valued gauge
  for Python metrics and the switch of a keyed operator's current shard. Thread mode looks
  classes up in the TaskManager's own class loader, so this jar goes on the JVM classpath.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

JAVA_SOURCES = Path(__file__).parent / "java"


def pyflink_home() -> Path:
    import pyflink

    return Path(pyflink.__file__).parent


def build_glue_jar(connector_jar: Path, cache_dir: Path) -> Path:
    """The Kafka glue, compiled against Flink and the shaded connector."""
    return _build_jar("freshrec-flink-glue", JAVA_SOURCES / "kafka", [connector_jar], cache_dir)


def build_metrics_jar(cache_dir: Path) -> Path:
    """The classes Python reaches through pemja (DoubleGauge, ShardKeySwitch), compiled
    against Flink."""
    return _build_jar("freshrec-flink-metrics", JAVA_SOURCES / "metrics", [], cache_dir)


def _build_jar(name: str, source_dir: Path, extra_classpath: list[Path], cache_dir: Path
               ) -> Path:
    sources = sorted(source_dir.rglob("*.java"))
    digest = hashlib.sha256()
    for src in sources:
        digest.update(src.read_bytes())
    for jar in extra_classpath:
        digest.update(jar.name.encode())
    jar = cache_dir / f"{name}-{digest.hexdigest()[:12]}.jar"
    if jar.exists():
        return jar
    javac = shutil.which("javac")
    if javac is None:
        raise RuntimeError(
            "javac not found: freshrec compiles two small Flink glue jars and needs a JDK 17+ "
            "(Debian: apt-get install openjdk-17-jdk-headless)"
        )
    home = pyflink_home()
    classpath = ":".join(
        [str(home / "lib" / "*"), str(home / "opt" / "*"), *map(str, extra_classpath)])
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Processes may build the same jar at once (test workers): each compiles in a directory
    # of its own and the finished jar replaces the name atomically.
    classes = Path(tempfile.mkdtemp(prefix=f"{name}-classes-", dir=cache_dir))
    try:
        subprocess.run(
            [javac, "--release", "17", "-nowarn", "-cp", classpath, "-d", str(classes),
             *map(str, sources)],
            check=True,
        )
        tmp = classes / "jar.tmp"
        with zipfile.ZipFile(tmp, "w") as zf:
            for cls in sorted(classes.rglob("*.class")):
                zf.write(cls, cls.relative_to(classes).as_posix())
        os.replace(tmp, jar)
    finally:
        shutil.rmtree(classes, ignore_errors=True)
    return jar
