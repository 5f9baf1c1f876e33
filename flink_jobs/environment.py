"""The Flink execution environment of freshrec, configured from settings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from pyflink.common import Configuration
from pyflink.datastream import (
    CheckpointingMode,
    ExternalizedCheckpointRetention,
    StreamExecutionEnvironment,
)

from flink_jobs.glue import build_metrics_jar
from flink_jobs.shard_keys import MAX_PARALLELISM
from freshrec_common.preexec import chain_preexec, die_with_parent
from freshrec_common.settings import Settings


def flink_configuration(settings: Settings) -> Configuration:
    """Configuration shared by the MiniCluster and cluster submissions."""
    job = settings.job
    conf = Configuration()
    # Thread mode runs Python in the TaskManager's JVM: measured 17x faster than process
    # mode with keyed state per record; with bundles, 1,646 against 967 events/s even with
    # process mode's state caches at 200k entries (docs/benchmarks.md).
    conf.set_string("python.execution-mode", "thread")
    conf.set_string("state.backend.type", job.state_backend)
    conf.set_string("state.backend.rocksdb.log.dir", str(flink_log_dir(settings)))
    conf.set_string("execution.checkpointing.dir", storage_uri(job.checkpoint_dir))
    conf.set_string("execution.checkpointing.num-retained", "2")
    restore = resolve_restore_path(job.checkpoint_dir, job.restore_from)
    if restore is not None:
        conf.set_string("execution.state-recovery.path", restore.resolve().as_uri())
    # A bounded restart strategy: a Python exception must surface instead of restarting forever.
    conf.set_string("restart-strategy.type", "fixed-delay")
    conf.set_string("restart-strategy.fixed-delay.attempts", str(job.restart_attempts))
    conf.set_string("restart-strategy.fixed-delay.delay", f"{job.restart_delay_ms} ms")
    conf.set_string("python.fn-execution.bundle.time", "20")
    conf.set_string("execution.buffer-timeout.interval", f"{job.network_buffer_timeout_ms} ms")
    # Workers use this interpreter (the venv), whatever PATH says.
    conf.set_string("python.executable", sys.executable)
    conf.set_string("python.client.executable", sys.executable)
    if job.metrics_port > 0:
        conf.set_string("metrics.reporter.prom.factory.class",
                        "org.apache.flink.metrics.prometheus.PrometheusReporterFactory")
        conf.set_string("metrics.reporter.prom.port", str(job.metrics_port))
        # Keep label values as they are: histogram buckets need le="0.5" and le="+Inf".
        conf.set_string("metrics.reporter.prom.filterLabelValueCharacters", "false")
    return conf


def storage_uri(path: str) -> str:
    """A local directory as a file:// URI; a URI (s3://, hdfs://, file://) is kept as is, so
    a job on a real cluster can checkpoint to shared storage.

    >>> storage_uri("s3://bucket/checkpoints")
    's3://bucket/checkpoints'
    >>> storage_uri("/tmp/chk")
    'file:///tmp/chk'
    """
    return path if "://" in path else Path(path).resolve().as_uri()


def flink_log_dir(settings: Settings) -> Path:
    return (Path(settings.job.checkpoint_dir).parent / "flink-logs").resolve()


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


def _put_on_jvm_classpath(jars: list[Path]) -> None:
    # PyFlink's gateway launcher appends HADOOP_CLASSPATH to the JVM classpath: the local
    # MiniCluster ignores plugins/ (by design: only the cluster entrypoints load plugins, so
    # the Prometheus reporter must be on the classpath) and thread mode looks classes up
    # in the JVM's own class loader (the metrics glue).
    current = [p for p in os.environ.get("HADOOP_CLASSPATH", "").split(os.pathsep) if p]
    for jar in map(str, jars):
        if jar not in current:
            current.append(jar)
    os.environ["HADOOP_CLASSPATH"] = os.pathsep.join(current)


def _ignore_stop_signals() -> None:
    # HotSpot installs no shutdown handler for a signal ignored at start (as PyFlink does for
    # SIGINT), and thread dumps (SIGQUIT) keep working.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _bound_popen(*args: Any, preexec_fn: Any = None, **kwargs: Any) -> subprocess.Popen:
    """PyFlink's launch of the gateway JVM (which hosts the MiniCluster, so the whole job),
    bound to this process.

    Without it the JVM outlives a Python process killed by SIGKILL (and, in Flink 2.2, one
    that simply exits), and keeps consuming and writing. ``PR_SET_PDEATHSIG`` has the kernel
    kill it when we end, however we end. In its own session, ignoring SIGTERM and SIGHUP, it
    is stopped only by us: a signal to our process group or control group (Ctrl-C, ``kill --
    -PGID``, systemd's default KillMode) would otherwise start its shutdown hooks under the
    running job, which then neither stops in order nor answers us."""
    return subprocess.Popen(*args, preexec_fn=chain_preexec(
        preexec_fn, _ignore_stop_signals, die_with_parent(signal.SIGKILL)),
        start_new_session=True, **kwargs)


def make_environment(settings: Settings, jars: list[Path]) -> StreamExecutionEnvironment:
    """A StreamExecutionEnvironment with checkpointing, parallelism and jars from settings."""
    _put_interpreter_on_path()
    # Each job logs beside its checkpoints, not into the shared site-packages folder.
    os.environ.setdefault("FLINK_LOG_DIR", str(flink_log_dir(settings)))
    classpath = [build_metrics_jar(Path(settings.local.cache_dir) / "flink")]
    if settings.job.metrics_port > 0:
        classpath.append(prometheus_reporter_jar())
    _put_on_jvm_classpath(classpath)
    from pyflink import pyflink_gateway_server

    pyflink_gateway_server.Popen = _bound_popen  # its launcher calls Popen(command, ...)
    env = StreamExecutionEnvironment.get_execution_environment(
        flink_configuration(settings)
    )
    env.add_jars(*(jar.resolve().as_uri() for jar in jars))
    env.set_parallelism(settings.job.parallelism)
    # Pinned: the shards' keys are chosen for it (flink_jobs.shard_keys), and changing it
    # would lose keyed state. Flink's default below 86 subtasks, so older state restores.
    env.set_max_parallelism(MAX_PARALLELISM)
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
