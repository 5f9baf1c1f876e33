"""``freshrec run``: the job on a local Flink MiniCluster in this process, until a stop
signal; then the job is cancelled (or stopped with a savepoint) and its JVM ended within
``job.stop_timeout_s`` (docs/operations.md, "Stopping and signals")."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import psutil

from devstack.jars import ensure_jars
from devstack.processes import (
    AlreadyRunning,
    children,
    describe,
    hold_lock,
    say,
    stop_processes,
)
from freshrec.signals import EXIT_FORCED, EXIT_REFUSED, STOP, exit_code
from freshrec_common import kafka_config
from freshrec_common.polling import wait_until
from freshrec_common.settings import Settings


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the job in this process on a local MiniCluster until a stop signal."""
    from flink_jobs.environment import resolve_restore_path

    if args.savepoint:
        settings = settings.replace("job", savepoint_on_stop=True)
    try:  # named before the broker is tried, so a bad path is not reported as a broker error
        resolve_restore_path(settings.job.checkpoint_dir, settings.job.restore_from)
    except ValueError as exc:
        print(f"freshrec run: bad setting: {exc}", file=sys.stderr)
        return 2
    kafka_config.check_reachable(settings)
    if not args.ignore_running:
        try:
            hold_job_locks(settings)
        except AlreadyRunning as exc:
            print(f"freshrec run: refused: this job is already running ({exc}); stop that one"
                  " first, or pass --ignore-running to start a second copy anyway",
                  file=sys.stderr)
            return EXIT_REFUSED
    try:
        return _run_job(settings)
    finally:
        # Whatever ended the run (an error, a signal during start-up), no JVM outlives it.
        _end_jvm(children(), time.monotonic() + 5)


def job_lock_paths(settings: Settings) -> list[Path]:
    """Lock files of the job's state: its checkpoint directory (when local) and its consumer
    group on its brokers (machine-wide, under the temp dir)."""
    key = hashlib.sha256(
        f"{settings.kafka.bootstrap_servers}|{settings.job.group_id}".encode()).hexdigest()[:16]
    group = Path(tempfile.gettempdir()) / f"freshrec-{os.getuid()}" / f"run-{key}.lock"
    checkpoints = settings.job.checkpoint_dir
    if "://" in checkpoints and not checkpoints.startswith("file://"):
        return [group]  # shared storage: the consumer group still names the job
    local = Path(checkpoints.removeprefix("file://")).expanduser().resolve()
    return [local / ".freshrec-run.lock", group]


def hold_job_locks(settings: Settings) -> None:
    about = (f"freshrec run, checkpoints {settings.job.checkpoint_dir}, group"
             f" {settings.job.group_id} on {settings.kafka.bootstrap_servers}")
    for path in job_lock_paths(settings):
        hold_lock(path, about)


def _run_job(settings: Settings) -> int:
    from flink_jobs.recommender_job import JOB_NAME, create_job

    ensure_jars(settings)  # the job finds them by path (flink_jobs.recommender_job.job_jars)
    env = create_job(settings)
    print(f"freshrec run: job '{JOB_NAME}' on the local MiniCluster, parallelism "
          f"{settings.job.parallelism}, {settings.job.delivery}; reading "
          f"{settings.topics.events}, writing {settings.topics.recommendations}", flush=True)
    if settings.job.metrics_port > 0:
        print(f"freshrec run: Flink metrics at http://127.0.0.1:{settings.job.metrics_port}/metrics",
              flush=True)
    # From here a signal only sets STOP.requested: a py4j call torn in the middle would leave
    # no way to stop the job in order.
    with STOP.deferred():
        client = env.execute_async(JOB_NAME)
        job_id = str(client.get_job_id())
        print(f"freshrec run: job {job_id} running (pid {os.getpid()}); SIGTERM, SIGINT or"
              f" SIGHUP stops it within {settings.job.stop_timeout_s:.0f}s", flush=True)
        while not STOP.requested.wait(0.5):
            ended = _ended(client)
            if ended is not None:
                state, error = ended
                print(f"freshrec run: job {job_id} ended {state}{error}", file=sys.stderr)
                return 0 if state == "FINISHED" else 1
        return _stop_job(client, job_id, settings)


def _ended(client: Any) -> tuple[str, str] | None:
    """(final state, error) once the job is over, None while it runs."""
    try:
        status = client.get_job_status().result()
        if not status.is_globally_terminal_state():
            return None
        state = status.name
    except Exception:  # the per-job MiniCluster is gone with its job
        state = "FAILED"
    try:
        client.get_job_execution_result().result()
    except Exception as exc:
        return state, f": {str(exc).strip().splitlines()[0][:500]}"
    return state, ""


def _stop_job(client: Any, job_id: str, settings: Settings) -> int:
    """Cancel (or stop with a savepoint) the running job, then end the JVM, within
    ``job.stop_timeout_s`` of the signal; kill the JVM after that and say what was left."""
    job = settings.job
    deadline = STOP.received_at + job.stop_timeout_s
    # The JVM needs a moment to end once the job is over (MiniCluster shutdown).
    job_deadline = deadline - min(5.0, job.stop_timeout_s / 3)
    how = f"stop-with-savepoint into {job.savepoint_dir}" if job.savepoint_on_stop else "cancel"
    say(f"freshrec run: {STOP.name} received; stopping job {job_id} ({how}) within"
        f" {job.stop_timeout_s:.0f}s")
    _quiet_py4j()
    jvm = children()
    names = ", ".join(describe(p) for p in jvm) or "no process"
    # py4j calls have no timeout: a JVM that stops answering would hold this thread past the
    # bound. At the job deadline this timer ends the JVM, which also fails any call waiting.
    ended_early: list[list[psutil.Process]] = []
    timer = threading.Timer(max(job_deadline - time.monotonic(), 0.0),
                            lambda: ended_early.append(_end_jvm(jvm, deadline)))
    timer.daemon = True
    timer.start()
    savepoint = ""
    try:
        if job.savepoint_on_stop:
            pending = _stop_with_savepoint(client, job.savepoint_dir)
        else:
            pending = client.cancel()
        wait_until(pending.done, max(job_deadline - time.monotonic(), 0.0))
        if pending.done() and job.savepoint_on_stop:
            # A local path, as job.restore_from takes it.
            savepoint = urllib.parse.urlparse(str(pending.result())).path
        wait_until(lambda: _ended(client), max(job_deadline - time.monotonic(), 0.0))
        stopped = pending.done() and _ended(client) is not None
    except Exception as exc:  # the JVM died, or the timer ended it: the bound holds below
        if time.monotonic() < job_deadline:
            say(f"freshrec run: stopping job {job_id} failed: {str(exc).strip()[:300]}")
        stopped = False
    timer.cancel()
    timer.join()  # when it fired: until the JVM is gone
    job_s = time.monotonic() - STOP.received_at
    if ended_early:
        stopped, killed = False, ended_early[0]
    else:
        killed = _end_jvm(jvm, deadline)
    took = time.monotonic() - STOP.received_at
    if stopped and not killed:
        what = f"stopped with savepoint {savepoint} (resume: --set job.restore_from={savepoint})" \
            if savepoint else "cancelled"
        say(f"freshrec run: job {job_id} {what}; JVM ended; stopped in {took:.1f}s (job"
            f" {job_s:.1f}s, JVM {took - job_s:.1f}s), exit {exit_code(STOP.signum or 0)}")
        # A cancelled exactly-once job aborts its open transactions, if the broker hears it.
        if job.delivery == "exactly-once" and not _broker_answers(settings):
            say(f"freshrec run: the broker does not answer; {_left_behind(settings)}")
        return exit_code(STOP.signum or 0)
    if not stopped:
        say(f"freshrec run: job {job_id} did not stop within"
            f" {job_deadline - STOP.received_at:.0f}s")
    how = "killed with SIGKILL" if killed else "ended"
    say(f"freshrec run: its JVM {names} {how}, {took:.1f}s after {STOP.name}")
    say(f"freshrec run: {_left_behind(settings)}; exit {EXIT_FORCED}")
    return EXIT_FORCED


def _exit_jvm_in_order() -> None:
    from pyflink.java_gateway import get_gateway

    with contextlib.suppress(Exception):  # never returns: the connection drops
        get_gateway().jvm.java.lang.System.exit(0)


def _end_jvm(jvm: list[psutil.Process], deadline: float) -> list[psutil.Process]:
    """Ask the JVM to exit (it ignores SIGTERM, see flink_jobs.environment) and SIGKILL it at
    ``deadline``; the processes that had to be killed."""
    # System.exit runs Flink's shutdown hooks (temporary dirs, the MiniCluster); the call
    # waits on a thread of its own.
    return stop_processes(
        jvm, timeout_s=max(deadline - time.monotonic(), 1.0), what="freshrec run", log=say,
        ask=lambda _: threading.Thread(target=_exit_jvm_in_order, daemon=True).start(),
        asked="System.exit")


def _quiet_py4j() -> None:
    """py4j logs a traceback for every call it can no longer make once the JVM is going
    (object finalizers at exit, the exit call itself), partly on the root logger; freshrec
    prints its own lines, which say what happened."""
    import logging

    logging.disable(logging.ERROR)


def _stop_with_savepoint(client: Any, directory: str) -> Any:
    from pyflink.common.completable_future import CompletableFuture
    from pyflink.java_gateway import get_gateway

    from flink_jobs.environment import storage_uri

    canonical = get_gateway().jvm.org.apache.flink.core.execution.SavepointFormatType.CANONICAL
    # PyFlink 2.2.1's JobClient.stop_with_savepoint calls a signature Flink 2 no longer has (no
    # upstream issue found; no release fixes it as of 2.2.1): call the Java method with the
    # format type.
    return CompletableFuture(
        client._j_job_client.stopWithSavepoint(False, storage_uri(directory), canonical), str)


def _left_behind(settings: Settings) -> str:
    """What a killed job leaves, for the operator: open transactions or a replay."""
    from flink_jobs.environment import resolve_restore_path

    job = settings.job
    try:
        since = f"since checkpoint {resolve_restore_path(job.checkpoint_dir, 'latest').name}"
    except ValueError:
        since = "since the start (no completed checkpoint)"
    if job.delivery == "exactly-once":
        ids = ", ".join(f"{job.group_id}-{sink}-*" for sink in ("recs", "items", "dlq"))
        return (f"Kafka transactions left to time out: transactional ids {ids} (the"
                f" transactions opened {since}); the broker aborts them after"
                f" job.transaction_timeout_ms={job.transaction_timeout_ms} ms, or the next run of"
                " this job aborts them at start; read_committed consumers never see them")
    return (f"the events read {since} are read again on the next start (at-least-once),"
            " so some lists may be published twice")


def _broker_answers(settings: Settings) -> bool:
    try:
        kafka_config.check_reachable(settings, timeout_ms=2000)
    except kafka_config.KafkaUnreachable:
        return False
    return True


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run", help="run the job on the local MiniCluster (blocking; SIGTERM/SIGINT/SIGHUP stop"
        " it, see docs/operations.md)")
    p.add_argument("--savepoint", action="store_true",
                   help="on stop, take a savepoint into job.savepoint_dir (job.savepoint_on_stop)")
    p.add_argument("--ignore-running", action="store_true",
                   help="start even when another run holds the same checkpoint dir or group id")
    p.set_defaults(func=run)
