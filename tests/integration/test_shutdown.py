"""Stopping `freshrec run` and `freshrec demo`: real processes, the whole tree checked with
psutil (docs/operations.md, "Stopping and signals").

- SIGTERM to `freshrec run` (at-least-once and exactly-once; to it alone, or to its JVM too
  as systemd's control-group kill does) cancels the job, ends its JVM and exits 143 within
  the bound; events sent afterwards get no list.
- A second `freshrec run` on the same checkpoint dir or consumer group is refused (exit 75)
  and names the running one; SIGKILL to the first leaves no JVM and frees the job.
- SIGTERM while the broker is down (exactly-once) still ends within the bound and names the
  transactions left to time out.
- SIGTERM to `freshrec demo` stops its job, JVM and broker; after a SIGKILL of the demo they
  stop by themselves.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from devstack.kafka_broker import broker_down
from devstack.processes import process_tree
from freshrec.run import job_lock_paths
from freshrec.signals import EXIT_FORCED, EXIT_REFUSED
from freshrec_common.polling import wait_until
from schemas.events import Event
from tests.integration.job_harness import JobProcess, Record, job_settings
from tests.integration.shop import BASE_TS, CATEGORIES, catalogue, item_id
from tests.kafka_fixtures import (
    REPO_ROOT,
    local_broker_overrides,
    local_broker_settings,
    start_broker,
)

BOUND_S = 30.0  # job.stop_timeout_s's default: the p99 goal


def views(prefix: str, n_users: int = 4) -> list[Event]:
    return [Event(f"{prefix}-{u}-{j}", "view", BASE_TS + 1000 * j + u, user_id=f"{prefix}-{u}",
                  item_id=item_id(CATEGORIES[u % len(CATEGORIES)], j))
            for u in range(n_users) for j in range(3)]


def users_with_lists(records: list[Record], prefix: str) -> set[str]:
    return {r.key.decode() for r in records if r.key and r.key.decode().startswith(prefix)}


def survivors(procs: list[psutil.Process], within_s: float) -> list[str]:
    """Those of ``procs`` still running after ``within_s`` (their names and command lines)."""
    _, alive = psutil.wait_procs(procs, timeout=within_s)
    return [f"{p.pid} {' '.join(p.cmdline())[:200]}" for p in alive if p.is_running()]


def stop_with(job: JobProcess, sig: int, timeout_s: float = BOUND_S + 15) -> tuple[int, float]:
    """Send ``sig`` to the job's process; its exit code and how long it took to exit."""
    assert job.proc is not None
    started = time.monotonic()
    job.proc.send_signal(sig)
    code = job.proc.wait(timeout=timeout_s)
    return code, time.monotonic() - started


def stopped_in(job: JobProcess) -> float:
    """The stop time `freshrec run` reports (from the signal to the end of its JVM)."""
    match = re.search(r"stopped in ([\d.]+)s", job.log_path.read_text("utf-8", "replace"))
    assert match, job.log_tail()
    return float(match[1])


# "tree": SIGTERM to every process at once, as systemd's default KillMode=control-group does.
@pytest.mark.parametrize(("delivery", "to"), [("at-least-once", "run"), ("exactly-once", "tree")])
def test_sigterm_stops_the_job_and_every_process(kafka_broker, tmp_path: Path, delivery: str,
                                                 to: str) -> None:
    settings, overrides = job_settings(kafka_broker.settings, tmp_path,
                                       [f"job.delivery={delivery}"])
    job = JobProcess(settings, overrides, tmp_path / "run.log", run_args=()).start()
    try:
        job.wait_for_line("running (pid")
        job.send_events(catalogue())
        job.send_events(views("before"))
        job.wait_for(settings.topics.recommendations,
                     lambda rs: len(users_with_lists(rs, "before")) == 4, timeout_s=180,
                     what="the lists of the users seen before the stop")
        assert job.proc is not None
        tree = process_tree(job.proc.pid)
        assert [p for p in tree if p.name() == "java"], "no JVM under freshrec run"

        if to == "tree":
            for p in tree[1:]:
                p.terminate()
        code, took = stop_with(job, signal.SIGTERM)
        output = job.log_path.read_text("utf-8", "replace")
        assert code == 128 + signal.SIGTERM, output
        assert "SIGTERM received; stopping job" in output and "cancelled; JVM ended" in output
        assert took <= BOUND_S, f"stopped in {took:.1f}s"
        print(f"\n{delivery}, SIGTERM to the {to}: stopped in {stopped_in(job):.1f}s, process"
              f" gone after {took:.1f}s")
        assert survivors(tree, 5) == []

        # Nothing reads the events topic any more: new users get no list.
        job.send_events(views("after"))
        time.sleep(3 * settings.job.checkpoint_interval_ms / 1000)
        assert users_with_lists(job.read_topic(settings.topics.recommendations), "after") == set()
    finally:
        job.stop()


def test_second_run_is_refused_and_sigkill_leaves_no_jvm(kafka_broker, tmp_path: Path) -> None:
    settings, overrides = job_settings(kafka_broker.settings, tmp_path)
    first = JobProcess(settings, overrides, tmp_path / "first.log", run_args=()).start()
    try:
        first.wait_for_line("running (pid")
        assert first.proc is not None
        # The same checkpoint dir and group; then only the same group (another checkpoint dir).
        for extra in ([], [f"job.checkpoint_dir={tmp_path / 'other-checkpoints'}"]):
            second = JobProcess(settings, [*overrides, *extra], tmp_path / "second.log",
                                run_args=())
            done = subprocess.run(second.command(), capture_output=True, text=True, timeout=120,
                                  cwd=REPO_ROOT, check=False)
            assert done.returncode == EXIT_REFUSED, done.stdout + done.stderr
            assert f"already running (pid {first.proc.pid} since " in done.stderr, done.stderr
            assert "--ignore-running" in done.stderr

        tree = process_tree(first.proc.pid)
        jvms = [p for p in tree if p.name() == "java"]
        assert jvms, "no JVM under freshrec run"
        first.proc.kill()
        first.proc.wait(timeout=10)
        assert survivors(jvms, 5) == [], "the JVM outlived its SIGKILLed parent"
        for path in job_lock_paths(settings):  # the kernel released the job's locks
            with path.open("a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        first.stop()


@pytest.mark.slow
@pytest.mark.parametrize("run_args", [(), ("--savepoint",)], ids=["cancel", "savepoint"])
def test_sigterm_with_the_broker_down_ends_within_the_bound(tmp_path: Path,
                                                           run_args: tuple[str, ...]) -> None:
    bound = 15.0
    broker_settings = local_broker_settings(tmp_path / "kafka")
    broker = start_broker(broker_settings)
    settings, overrides = job_settings(
        broker_settings, tmp_path, ["job.delivery=exactly-once", f"job.stop_timeout_s={bound}"])
    job = JobProcess(settings, overrides, tmp_path / "run.log", run_args=run_args).start()
    try:
        job.wait_for_line("running (pid")
        job.send_events(catalogue())
        job.wait_for_checkpoint()
        assert job.proc is not None
        tree = process_tree(job.proc.pid)
        psutil.Process(broker.pid).kill()  # unreachable, mid-transaction
        code, took = stop_with(job, signal.SIGTERM)
        output = job.log_path.read_text("utf-8", "replace")
        # A savepoint needs the broker (its commit): that stop overruns the bound and the JVM
        # is ended. A cancel may give up on the broker in time, or overrun as well.
        expected = {EXIT_FORCED} if run_args else {128 + signal.SIGTERM, EXIT_FORCED}
        assert code in expected, output
        assert took <= bound + 3, f"took {took:.1f}s\n{output}"
        print(f"\nbroker down, {run_args or 'cancel'}: exit {code} after {took:.1f}s")
        group = settings.job.group_id
        assert "Kafka transactions left to time out" in output, output
        assert f"{group}-recs-*, {group}-items-*, {group}-dlq-*" in output
        assert survivors(tree, 5) == []
    finally:
        job.stop()
        broker_down(broker_settings)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_stopped_or_killed_demo_leaves_nothing_it_started(tmp_path: Path, sig: int) -> None:
    # A broker of its own, not running yet: the demo starts it, and so stops it.
    overrides = [*local_broker_overrides(tmp_path / "kafka" / "state"),
                 f"job.checkpoint_dir={tmp_path / 'checkpoints'}", "job.metrics_port=0",
                 "job.group_id=demo-shutdown-test"]
    log_path = tmp_path / "demo.log"
    with log_path.open("ab") as log:
        demo = subprocess.Popen(
            [sys.executable, "-m", "freshrec.cli", *[a for o in overrides for a in ("--set", o)],
             "demo", "--rate", "50", "--every", "1"],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        def listed() -> bool:
            assert demo.poll() is None, log_path.read_text("utf-8", "replace")
            return "  seq " in log_path.read_text("utf-8", "replace")

        assert wait_until(listed, 240, interval_s=0.5), log_path.read_text("utf-8", "replace")
        tree = process_tree(demo.pid)
        names = sorted(p.name() for p in tree)
        assert names.count("java") == 2, names  # the broker and the job's MiniCluster

        started = time.monotonic()
        demo.send_signal(sig)
        code = demo.wait(timeout=BOUND_S + 15)
        if sig == signal.SIGKILL:
            # Its job and broker were bound to it: they get SIGTERM and stop by themselves.
            assert code == -signal.SIGKILL
            assert survivors(tree, BOUND_S) == []
            print(f"\ndemo killed: all gone after {time.monotonic() - started:.1f}s")
            return
        took = time.monotonic() - started
        output = log_path.read_text("utf-8", "replace")
        assert code == 128 + signal.SIGTERM, output
        assert "demo: SIGTERM received" in output and "kafka: stopped" in output, output
        assert took <= BOUND_S, f"took {took:.1f}s"
        print(f"\ndemo: stopped in {took:.1f}s")
        assert survivors(tree, 5) == []
    finally:
        for p in process_tree(demo.pid):
            p.kill()
