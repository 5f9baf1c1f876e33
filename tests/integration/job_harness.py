"""Run the real freshrec job (Flink MiniCluster in a child process) against the test broker.

Each job gets its own topics, consumer group and checkpoint directory, so tests never see
each other's records. The child is killed with its whole process tree at the end.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.kafka_topics import create_topic, dlq_topic_configs
from devstack.processes import kill_tree, process_tree
from freshrec_common import kafka_config
from freshrec_common.polling import wait_until
from freshrec_common.settings import Settings, load_settings
from schemas.events import Event, encode_event

REPO_ROOT = Path(__file__).resolve().parents[2]
# "<task name> (1/2)#0 (<attempt id>) switched from INITIALIZING to RUNNING."
_TASK_SWITCH = re.compile(
    r"taskmanager\.Task\s.*?- (?P<task>.+?\(\d+/\d+\)#\d+) .*switched from \w+ to (?P<state>\w+)")


@dataclass
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    def json(self) -> Any:
        return None if self.value is None else json.loads(self.value)


@dataclass
class JobProcess:
    """A running job and the topics it owns."""

    settings: Settings
    overrides: list[str]
    log_path: Path
    # Extra environment of the job process (e.g. FRESHREC_INJECT_FAULT).
    env: dict[str, str] = field(default_factory=dict)
    # Run it as `freshrec run <run_args>` (signals, locks) instead of the job module's main.
    run_args: tuple[str, ...] | None = None
    proc: subprocess.Popen[bytes] | None = None
    _producer: Any = field(default=None, repr=False)

    def command(self) -> list[str]:
        sets = [arg for o in self.overrides for arg in ("--set", o)]
        if self.run_args is None:
            return [sys.executable, "-m", "flink_jobs.recommender_job", *sets]
        return [sys.executable, "-m", "freshrec.cli", *sets, "run", *self.run_args]

    def start(self) -> JobProcess:
        log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "FLINK_LOG_DIR": str(self.log_dir), **self.env}
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     cwd=REPO_ROOT, env=env, start_new_session=True)
        return self

    def wait_for_line(self, text: str, timeout_s: float = 180) -> str:
        """The first line of the job's output containing ``text``, once it is written."""
        def line() -> str | None:
            self.assert_alive()
            return next((t for t in self.log_path.read_text("utf-8", "replace").splitlines()
                         if text in t), None)

        found = wait_until(line, timeout_s, interval_s=0.3)
        if found is None:
            raise AssertionError(f"no {text!r} in the job's output after {timeout_s:.0f}s\n"
                                 f"{self.log_tail()}")
        return found

    def assert_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the job exited with {self.proc.returncode}:\n{self.log_tail()}")

    @property
    def log_dir(self) -> Path:
        return self.log_path.parent / "flink-logs"

    def flink_log_lines(self) -> list[str]:
        return [line for path in sorted(self.log_dir.glob("*.log"))
                for line in path.read_text("utf-8", "replace").splitlines()]

    def completed_checkpoint(self) -> int:
        """Number of the newest completed checkpoint in the job's directory (0: none yet)."""
        done = Path(self.settings.job.checkpoint_dir).glob("*/chk-*/_metadata")
        return max((int(m.parent.name.removeprefix("chk-")) for m in done), default=0)

    def wait_for_checkpoint(self, timeout_s: float = 60) -> int:
        """Until a checkpoint completes after this call; its number."""
        before = self.completed_checkpoint()

        def newer() -> int:
            self.assert_alive()
            now = self.completed_checkpoint()
            return now if now > before else 0

        done = wait_until(newer, timeout_s, interval_s=0.5)
        if done is None:
            raise AssertionError(f"no checkpoint completed in {timeout_s:.0f}s\n{self.log_tail()}")
        return done

    def restarts(self) -> int:
        """How often Flink restarted the job (failover), from its JobMaster log."""
        return sum("switched from state RUNNING to RESTARTING" in line
                   for line in self.flink_log_lines())

    def log_tail(self, lines: int = 40) -> str:
        """The job's output and the causes of failures in its Flink log."""
        text = self.log_path.read_text("utf-8", "replace").splitlines()
        flink = [line for line in self.flink_log_lines()
                 if "Caused by" in line or "Exception:" in line]
        return "\n".join(flink[-12:] + text[-lines:])

    def stop(self) -> None:
        if self._producer is not None:
            self._producer.close()
        if self.proc is None or self.proc.poll() is not None:
            return
        kill_tree(self.proc.pid, what="job", log=print)
        self.proc.wait(timeout=30)

    # -- traffic ----------------------------------------------------------------------
    def send_events(self, events: Iterable[Event], flush_timeout_s: float = 30) -> int:
        n = 0
        for event in events:
            key = event.item_id if event.event_type == "item_upsert" else event.user_id
            self.send_raw((key or "").encode(), encode_event(event))
            n += 1
        self.flush(flush_timeout_s)
        return n

    def send_raw(self, key: bytes | None, value: bytes | None) -> Any:
        """Send one record as is; returns its future (``.get()`` -> partition and offset)."""
        if self._producer is None:
            self._producer = kafka_config.producer(
                self.settings, acks="all", linger_ms=5, max_request_size=2 * 1024 * 1024)
        return self._producer.send(self.settings.topics.events, key=key, value=value)

    def flush(self, timeout_s: float = 30) -> None:
        if self._producer is not None:
            self._producer.flush(timeout=timeout_s)

    # -- output -------------------------------------------------------------------------
    def read_topic(self, topic: str, timeout_s: float = 30) -> list[Record]:
        """Every record of ``topic`` so far, committed ones only, in (partition, offset) order.

        Reads up to the end offsets taken first (for ``read_committed``: the last stable
        offset), so a slow broker cannot cut the read short; a quiet spell alone could."""
        from kafka import TopicPartition

        consumer = kafka_config.consumer(
            self.settings, enable_auto_commit=False, isolation_level="read_committed")
        out: list[Record] = []
        try:
            partitions = [TopicPartition(topic, p)
                          for p in sorted(consumer.partitions_for_topic(topic) or ())]
            if not partitions:  # no metadata yet: nothing to read so far
                return []
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
            ends = consumer.end_offsets(partitions)
            deadline = time.monotonic() + timeout_s
            # Transaction markers take offsets too: a partition is done when its position
            # reaches the end offset, not when the last record's offset does.
            while any(consumer.position(tp) < ends[tp] for tp in partitions) \
                    and time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=500).values():
                    out.extend(Record(m.partition, m.offset, m.key, m.value) for m in batch)
        finally:
            consumer.close()
        return sorted(out, key=lambda r: (r.partition, r.offset))

    def wait_for(self, topic: str, done: Callable[[list[Record]], bool], timeout_s: float = 120,
                 what: str = "records") -> list[Record]:
        """Poll ``topic`` until ``done(records)``; fail with the job log on timeout."""
        records: list[Record] = []

        def read() -> bool:
            nonlocal records
            self.assert_alive()
            records = self.read_topic(topic)
            return done(records)

        if wait_until(read, timeout_s, interval_s=1.0):
            return records
        raise AssertionError(
            f"timed out after {timeout_s:.0f}s waiting for {what} on {topic} "
            f"({len(records)} records so far)\n{self.diagnose()}\n{self.log_tail()}")

    def task_states(self) -> dict[str, str]:
        """Each task's latest state, from the TaskManager's "switched from X to Y" lines."""
        states: dict[str, str] = {}
        for line in self.flink_log_lines():
            match = _TASK_SWITCH.search(line)
            if match:
                states[match["task"]] = match["state"]
        return states

    def diagnose(self) -> str:
        """Why a job makes no progress: tasks that are not RUNNING, and the stacks of its
        JVM (jstack) and of the Python threads inside it (py-spy), saved next to the logs.
        The Python stacks are also returned, as a deadlock shows there first."""
        lines = [f"task not running: {task} ({state})"
                 for task, state in self.task_states().items() if state != "RUNNING"]
        assert self.proc is not None
        py_spy = str(Path(sys.executable).parent / "py-spy")
        # The JVM runs in a session of its own (flink_jobs.environment): found by parentage.
        for pid in [str(p.pid) for p in process_tree(self.proc.pid) if p.name() == "java"]:
            tools = (("jstack", ["jstack", pid]),
                     ("py-spy", [py_spy, "dump", "--pid", pid]))
            for tool, argv in tools:
                path = self.log_dir / f"{tool}-{pid}.txt"
                try:
                    done = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                                          check=False)
                except (OSError, subprocess.TimeoutExpired) as exc:
                    lines.append(f"{tool} of pid {pid} failed: {exc}")
                    continue
                path.write_text(done.stdout + done.stderr)
                lines.append(f"{tool} of pid {pid} saved to {path}")
                if tool == "py-spy":
                    lines.append(done.stdout + done.stderr)
        return "\n".join(lines)


def job_settings(broker_settings: Settings, tmp: Path, extra: Iterable[str] = (),
                 tag: str | None = None) -> tuple[Settings, list[str]]:
    """Overrides for a job on the test broker with fresh, uniquely named topics (named after
    ``tag``, random by default), created here."""
    tag = tag or uuid.uuid4().hex[:8]
    base = [
        f"kafka.bootstrap_servers={broker_settings.kafka.bootstrap_servers}",
        f"local.cache_dir={broker_settings.local.cache_dir}",
        f"topics.events=it-{tag}.events",
        f"topics.dlq=it-{tag}.dlq",
        f"topics.recommendations=it-{tag}.recommendations",
        f"topics.item_embeddings=it-{tag}.item-embeddings",
        f"job.group_id=it-{tag}",
        f"job.checkpoint_dir={tmp / 'checkpoints'}",
        f"job.savepoint_dir={tmp / 'savepoints'}",
        "job.starting_offsets=earliest",
        "job.checkpoint_interval_ms=2000",
        "job.restart_delay_ms=500",
        "job.metrics_port=0",
        *extra,
    ]
    settings = load_settings(overrides=base)
    topics = settings.topics
    compact = {"cleanup.policy": "compact"}
    create_topic(settings, topics.events, partitions=topics.partitions)
    create_topic(settings, topics.dlq, partitions=1, configs=dlq_topic_configs(settings))
    create_topic(settings, topics.recommendations, partitions=topics.partitions, configs=compact)
    create_topic(settings, topics.item_embeddings, partitions=topics.partitions, configs=compact)
    return settings, base


def latest_by_key(records: Iterable[Record]) -> dict[str, Record]:
    out: dict[str, Record] = {}
    for rec in records:
        if rec.key is not None:
            out[rec.key.decode()] = rec
    return out
