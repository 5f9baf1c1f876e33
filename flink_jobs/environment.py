"""The Flink execution environment of freshrec, configured from settings."""

from __future__ import annotations

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
    # A bounded restart strategy: a Python exception must surface instead of restarting forever.
    conf.set_string("restart-strategy.type", "fixed-delay")
    conf.set_string("restart-strategy.fixed-delay.attempts", str(restart_attempts))
    conf.set_string("restart-strategy.fixed-delay.delay", "2 s")
    conf.set_string("python.fn-execution.bundle.time", "20")
    return conf


def make_environment(
    settings: Settings, jars: list[Path], restart_attempts: int = 3
) -> StreamExecutionEnvironment:
    """A StreamExecutionEnvironment with checkpointing, parallelism and jars from settings."""
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
