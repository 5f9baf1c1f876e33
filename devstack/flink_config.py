"""The configuration and files of the local Flink standalone session cluster.

It runs from the scripts shipped in the apache-flink wheel (``FLINK_HOME`` = the installed
``pyflink`` package). Nothing in the wheel is modified: the processes read a generated
``config.yaml`` from their own ``FLINK_CONF_DIR`` and write logs and pid files under
``cluster.state_dir``::

    <state_dir>/conf/config.yaml   generated from the cluster.* settings (rewritten on up)
    <state_dir>/conf/log4j*.properties, logback*.xml   copied from the wheel
    <state_dir>/lib/               FLINK_LIB_DIR: links to the wheel's lib/*.jar and
                                   opt/flink-python-*.jar (see :func:`link_lib_dir`)
    <state_dir>/log/flink-*-standalonesession-0-*.log|.out, ...-taskexecutor-N-*.log|.out
    <state_dir>/pid/flink-*-standalonesession.pid, flink-*-taskexecutor.pid
    <state_dir>/last-job           id of the last job `freshrec submit` started
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devstack.jars import ensure_jars
from devstack.prerequisites import LocalKafkaError, check_java
from freshrec_common.settings import Settings

PROMETHEUS_FACTORY = "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
_COPIED_CONF = ("log4j.properties", "log4j-cli.properties", "log4j-console.properties",
                "log4j-session.properties", "logback.xml", "logback-console.xml",
                "logback-session.xml")
# The JVM options the wheel's own config.yaml sets (Flink needs them on Java 17); used when
# they cannot be read from it.
_FALLBACK_JAVA_OPTS = (
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED "
    "--add-opens=java.base/java.lang=ALL-UNNAMED --add-opens=java.base/java.net=ALL-UNNAMED "
    "--add-opens=java.base/java.io=ALL-UNNAMED --add-opens=java.base/java.nio=ALL-UNNAMED "
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED "
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED "
    "--add-opens=java.base/java.text=ALL-UNNAMED --add-opens=java.base/java.time=ALL-UNNAMED "
    "--add-opens=java.base/java.util=ALL-UNNAMED "
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED "
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED "
    "--add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED"
)


class ClusterError(RuntimeError):
    """The cluster could not be started, stopped or used; the message says why."""


def flink_home() -> Path:
    """The Flink distribution inside the apache-flink wheel (``bin/``, ``lib/``, ``plugins/``)."""
    import importlib.util

    spec = importlib.util.find_spec("pyflink")
    if spec is None or spec.origin is None:
        raise ClusterError("pyflink is not installed in this Python: run `make setup`")
    home = Path(spec.origin).parent
    if not (home / "bin" / "jobmanager.sh").is_file():
        raise ClusterError(f"{home}/bin/jobmanager.sh is missing: the apache-flink wheel is"
                           " incomplete")
    return home


@dataclass(frozen=True)
class ClusterPaths:
    state: Path
    conf: Path
    lib: Path
    log: Path
    pid: Path
    checkpoints: Path
    savepoints: Path
    last_job: Path

    @classmethod
    def of(cls, settings: Settings) -> ClusterPaths:
        state = Path(settings.cluster.state_dir).expanduser().resolve()
        return cls(
            state=state,
            conf=state / "conf",
            lib=state / "lib",
            log=state / "log",
            pid=state / "pid",
            checkpoints=Path(settings.job.checkpoint_dir).expanduser().resolve(),
            savepoints=Path(settings.cluster.savepoint_dir).expanduser().resolve(),
            last_job=state / "last-job",
        )

    def pid_files(self) -> list[Path]:
        return sorted(self.pid.glob("flink-*.pid"))


def rest_url(settings: Settings) -> str:
    return f"http://{settings.cluster.host}:{settings.cluster.rest_port}"


def venv_python() -> str:
    return sys.executable


def _java_opts(home: Path) -> str:
    try:
        text = (home / "conf" / "config.yaml").read_text("utf-8")
    except OSError:
        return _FALLBACK_JAVA_OPTS
    m = re.search(r"^\s*all:\s*(--add-\S.*)$", text, re.MULTILINE)
    return m.group(1).strip() if m else _FALLBACK_JAVA_OPTS


def java_home() -> str:
    """The JDK/JRE home of the ``java`` freshrec uses (JAVA_HOME, else ``java`` on PATH).

    Flink's scripts export ``JAVA_HOME=""`` when it is unset, and PyFlink inside a
    TaskManager then looks for ``bin/java`` relative to the working directory (it starts a
    helper JVM when a job builds state TTL settings): the cluster always gets a real home.
    """
    try:
        java = check_java()
    except LocalKafkaError as exc:
        raise ClusterError(str(exc).replace("the local Kafka broker", "Flink")) from None
    return str(Path(java).resolve().parent.parent)


def cluster_configuration(settings: Settings, home: Path | None = None) -> dict[str, str]:
    """The flattened ``config.yaml`` of the cluster (every key is a Flink option)."""
    c = settings.cluster
    paths = ClusterPaths.of(settings)
    home = home or flink_home()
    python = venv_python()
    return {
        "jobmanager.rpc.address": c.host,
        "jobmanager.rpc.port": str(c.rpc_port),
        "jobmanager.bind-host": c.host,
        "jobmanager.memory.process.size": c.jobmanager_memory,
        "jobmanager.execution.failover-strategy": "region",
        # A TaskManager that dies (kill -9, OOM) is declared lost after two failed heartbeat
        # RPCs, ~4 s, instead of the 50 s default timeout; its tasks restart elsewhere.
        "heartbeat.interval": "2000",
        "heartbeat.timeout": "20000",
        "rest.address": c.host,
        "rest.bind-address": c.host,
        "rest.port": str(c.rest_port),
        "taskmanager.host": c.host,
        "taskmanager.bind-host": c.host,
        "taskmanager.numberOfTaskSlots": str(c.slots_per_taskmanager),
        "taskmanager.memory.process.size": c.taskmanager_memory,
        "taskmanager.memory.managed.fraction": str(c.managed_memory_fraction),
        # Spread a job's slots over all TaskManagers instead of filling one first.
        "taskmanager.load-balance.mode": "SLOTS",
        "parallelism.default": str(c.parallelism),
        # Python runs inside the TaskManager JVM (17x faster than process mode with state)
        # with the venv's interpreter, which has pyflink and the project installed.
        "python.execution-mode": "thread",
        "python.executable": python,
        "python.client.executable": python,
        # Prometheus: the reporter is loaded from FLINK_HOME/plugins/metrics-prometheus.
        "metrics.reporter.prom.factory.class": PROMETHEUS_FACTORY,
        "metrics.reporter.prom.port": c.metrics_ports,
        # Keep label values as they are: histogram buckets need le="0.5" and le="+Inf".
        "metrics.reporter.prom.filterLabelValueCharacters": "false",
        "state.backend.type": settings.job.state_backend,
        "execution.checkpointing.dir": paths.checkpoints.as_uri(),
        "execution.checkpointing.savepoint-dir": paths.savepoints.as_uri(),
        "env.java.home": java_home(),
        "env.java.opts.all": _java_opts(home),
    }


_NEEDS_QUOTES = re.compile(r"^$|^[\s\[\]{}&*!|>'\"%@`#,?-]|: | #|\s$")


def render_config_yaml(conf: dict[str, str]) -> str:
    """YAML text, one flattened key per line.

    Values are plain scalars where YAML allows it: Flink's shell scripts read some keys
    (``env.java.home``) line by line and would keep quotes.

    >>> print(render_config_yaml({"rest.port": "8081", "a": "x: y", "b": "--opt=1 --x"}), end="")
    # Written by `freshrec cluster up` from the cluster.* settings; edits are overwritten.
    rest.port: 8081
    a: "x: y"
    b: --opt=1 --x
    """
    lines = ["# Written by `freshrec cluster up` from the cluster.* settings; edits are"
             " overwritten."]
    for key, value in conf.items():
        shown = json.dumps(value) if _NEEDS_QUOTES.search(value) and not value.startswith("--") \
            else value
        lines.append(f"{key}: {shown}")
    return "\n".join(lines) + "\n"


def link_lib_dir(settings: Settings, extra_jars: Sequence[Path], home: Path | None = None
                 ) -> Path:
    """``FLINK_LIB_DIR`` of the cluster: links to the wheel's ``lib/*.jar``, its
    ``opt/flink-python-*.jar`` and ``extra_jars`` (the job's connector and glue jars).

    In thread mode the Python interpreter (pemja) is a native library that a JVM loads once:
    from a per-job class loader, the second job on a TaskManager (a resume from a savepoint)
    fails with ``NoSuchFieldException: loadedLibraryNames`` on Java 17. So flink-python sits
    on the TaskManagers' own classpath, and with it every Java class the job's Python code
    looks up through pemja (the glue jar's ``DoubleGauge``), which the parent class loader
    must see. The job still attaches the same jars (``pipeline.jars``) for its Java operators.
    """
    home = home or flink_home()
    lib = ClusterPaths.of(settings).lib
    jars = [*sorted(home.glob("lib/*.jar")), *sorted(home.glob("opt/flink-python-*.jar")),
            *extra_jars]
    if not any(j.name.startswith("flink-python-") for j in jars):
        raise ClusterError(f"{home}/opt/flink-python-*.jar is missing from the apache-flink wheel")
    shutil.rmtree(lib, ignore_errors=True)
    lib.mkdir(parents=True)
    for jar in jars:
        (lib / jar.name).symlink_to(Path(jar).resolve())
    return lib


def cluster_jars(settings: Settings) -> list[Path]:
    """The project jars the TaskManagers load themselves: the job's connector and glue jars
    and the metrics glue that Python looks up through pemja."""
    from flink_jobs.glue import build_metrics_jar
    from flink_jobs.recommender_job import job_jars  # pyflink: seconds to import

    ensure_jars(settings)
    return [*job_jars(settings),
            build_metrics_jar(Path(settings.local.cache_dir).resolve() / "flink")]


def stale_lib_jars(settings: Settings, jars: Sequence[Path]) -> list[str]:
    """Names of the job's jars the running cluster's lib/ lacks (a glue jar rebuilt since
    `cluster up`): the cluster must be restarted to load them."""
    lib = ClusterPaths.of(settings).lib
    return [j.name for j in jars if not (lib / j.name).exists()]


def write_conf_dir(settings: Settings, home: Path | None = None) -> Path:
    home = home or flink_home()
    paths = ClusterPaths.of(settings)
    for d in (paths.conf, paths.log, paths.pid, paths.checkpoints, paths.savepoints):
        d.mkdir(parents=True, exist_ok=True)
    for name in _COPIED_CONF:
        src = home / "conf" / name
        if src.is_file():
            shutil.copyfile(src, paths.conf / name)
    (paths.conf / "config.yaml").write_text(
        render_config_yaml(cluster_configuration(settings, home)), "utf-8")
    return paths.conf


def script_env(settings: Settings, home: Path | None = None) -> dict[str, str]:
    """Environment of the Flink scripts: our conf, log and pid dirs, the venv first on PATH."""
    home = home or flink_home()
    paths = ClusterPaths.of(settings)
    env = dict(os.environ)
    venv_bin = str(Path(venv_python()).parent)
    env.update({
        "FLINK_HOME": str(home),
        "FLINK_CONF_DIR": str(paths.conf),
        "FLINK_LIB_DIR": str(paths.lib),
        "FLINK_LOG_DIR": str(paths.log),
        "FLINK_PID_DIR": str(paths.pid),
        "PATH": os.pathsep.join([venv_bin, env.get("PATH", "")]),
        # bin/find-flink-home.sh runs find_flink_home.py with this interpreter.
        "PYFLINK_PYTHON": venv_python(),
        # Names the log and pid files (flink-freshrec-taskexecutor-0-<host>.log).
        "FLINK_IDENT_STRING": "freshrec",
        "JAVA_HOME": java_home(),
    })
    # A HADOOP_CLASSPATH left by a local job (the reporter jar) must not reach the cluster.
    env.pop("HADOOP_CLASSPATH", None)
    return env
