"""The Flink execution environment of freshrec, configured from settings."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pyflink.common import Configuration
from pyflink.datastream import (
    CheckpointingMode,
    ExternalizedCheckpointRetention,
    StreamExecutionEnvironment,
)

from freshrec.settings import Settings


def flink_configuration(settings: Settings, restart_attempts: int = 3) -> Configuration:
    """Configuration shared by the MiniCluster and cluster submissions."""
    job = settings.job
    conf = Configuration()
    # Thread mode runs Python in the TaskManager's JVM: measured 17x faster than process
    # mode with keyed state on these machines.
    conf.set_string("python.execution-mode", "thread")
    conf.set_string("state.backend.type", job.state_backend)
    conf.set_string("execution.checkpointing.dir", Path(job.checkpoint_dir).resolve().as_uri())
    conf.set_string("execution.checkpointing.num-retained", "2")
    restore = resolve_restore_path(job.checkpoint_dir, job.restore_from)
    if restore is not None:
        conf.set_string("execution.state-recovery.path", restore.resolve().as_uri())
    # A bounded restart strategy: a Python exception must surface instead of restarting forever.
    conf.set_string("restart-strategy.type", "fixed-delay")
    conf.set_string("restart-strategy.fixed-delay.attempts", str(restart_attempts))
    conf.set_string("restart-strategy.fixed-delay.delay", "2 s")
    conf.set_string("python.fn-execution.bundle.time", "20")
    # Workers use this interpreter (the venv), whatever PATH says.
    conf.set_string("python.executable", sys.executable)
    conf.set_string("python.client.executable", sys.executable)
    if job.metrics_port > 0:
        conf.set_string("metrics.reporter.prom.factory.class",
                        "org.apache.flink.metrics.prometheus.PrometheusReporterFactory")
        conf.set_string("metrics.reporter.prom.port", str(job.metrics_port))
    return conf


def resolve_restore_path(checkpoint_dir: str, restore_from: str) -> Path | None:
    """The checkpoint/savepoint to start from; "latest" is the newest completed checkpoint."""
    if not restore_from:
        return None
    if restore_from != "latest":
        path = Path(restore_from)
        if not (path / "_metadata").exists():
            raise ValueError(f"job.restore_from: {path} is not a checkpoint or savepoint "
                             "(no _metadata file in it)")
        return path
    completed = sorted(Path(checkpoint_dir).glob("*/chk-*/_metadata"),
                       key=lambda p: p.stat().st_mtime)
    if not completed:
        raise ValueError(f"job.restore_from=latest: no completed checkpoint under {checkpoint_dir}")
    return completed[-1].parent


def prometheus_reporter_jar() -> Path:
    """Flink's Prometheus reporter, shipped in the apache-flink wheel as a plugin."""
    import pyflink

    plugin_dir = Path(pyflink.__file__).parent / "plugins" / "metrics-prometheus"
    jars = sorted(plugin_dir.glob("flink-metrics-prometheus-*.jar"))
    if not jars:
        raise RuntimeError(f"Flink's Prometheus reporter jar is missing from {plugin_dir}")
    return jars[0]


def _put_interpreter_on_path() -> None:
    # Thread mode embeds the interpreter found on PATH in the JVM this process launches;
    # without the venv first it misses pyflink/pemja ("No module named 'pemja'").
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = os.pathsep.join([bin_dir, path])


def _put_reporter_on_gateway_classpath() -> None:
    # The local MiniCluster ignores plugins/; the reporter loads only from the JVM classpath,
    # and PyFlink's gateway launcher appends HADOOP_CLASSPATH to it.
    jar = str(prometheus_reporter_jar())
    current = os.environ.get("HADOOP_CLASSPATH", "")
    if jar not in current.split(os.pathsep):
        os.environ["HADOOP_CLASSPATH"] = os.pathsep.join(p for p in (current, jar) if p)


def make_environment(
    settings: Settings, jars: list[Path], restart_attempts: int = 3
) -> StreamExecutionEnvironment:
    """A StreamExecutionEnvironment with checkpointing, parallelism and jars from settings."""
    _put_interpreter_on_path()
    if settings.job.metrics_port > 0:
        _put_reporter_on_gateway_classpath()
    env = StreamExecutionEnvironment.get_execution_environment(
        flink_configuration(settings, restart_attempts)
    )
    env.add_jars(*(jar.resolve().as_uri() for jar in jars))
    env.set_parallelism(settings.job.parallelism)
    mode = (
        CheckpointingMode.EXACTLY_ONCE
        if settings.job.delivery == "exactly-once"
        else CheckpointingMode.AT_LEAST_ONCE
    )
    env.enable_checkpointing(settings.job.checkpoint_interval_ms, mode)
    env.get_checkpoint_config().set_externalized_checkpoint_retention(
        ExternalizedCheckpointRetention.RETAIN_ON_CANCELLATION
    )
    return env
