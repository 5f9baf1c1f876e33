"""`freshrec cluster up|down` and `freshrec prometheus up|down` as real commands, every
process they start checked with psutil (docs/operations.md, "Stopping and signals"):
a SIGTERM during `cluster up` stops what it started, and `down` leaves nothing behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from devstack.flink_cluster import cluster_down, running_processes
from devstack.processes import free_ports
from devstack.prometheus import INSTALL_HINT, binary, pid_file, state_dir
from freshrec_common.polling import wait_until
from freshrec_common.settings import load_settings
from tests.kafka_fixtures import REPO_ROOT

pytestmark = pytest.mark.timeout(600)


def cli(overrides: list[str], *args: str) -> list[str]:
    return [sys.executable, "-m", "freshrec.cli", *[a for o in overrides for a in ("--set", o)],
            *args]


def live(pids: list[int], within_s: float = 5) -> list[int]:
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=within_s)
    return [p.pid for p in alive]


def test_cluster_up_interrupted_then_up_and_down_leave_no_process(tmp_path: Path) -> None:
    rest_port, rpc_port = free_ports(2)
    overrides = [f"cluster.state_dir={tmp_path / 'cluster'}", f"cluster.rest_port={rest_port}",
                 f"cluster.rpc_port={rpc_port}", "cluster.taskmanagers=1",
                 "cluster.parallelism=1", f"local.cache_dir={REPO_ROOT / '.cache'}"]
    settings = load_settings(overrides=overrides)
    try:
        # SIGTERM while `up` waits for its processes: it stops them and exits 143.
        up = subprocess.Popen(cli(overrides, "cluster", "up"), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT)
        def jobmanager_started() -> bool:
            assert up.poll() is None, up.communicate()[0]
            return any(p.role == "jobmanager" for p in running_processes(settings))

        assert wait_until(jobmanager_started, 120), "no JobManager after 120 s"
        started = [p.pid for p in running_processes(settings)]
        up.send_signal(signal.SIGTERM)
        output = up.communicate(timeout=60)[0]
        assert up.returncode == 128 + signal.SIGTERM, output
        assert "start interrupted; stopping" in output, output
        assert live(started) == []
        assert running_processes(settings) == []

        # A completed `up` leaves the daemons running on their own; `down` ends every one.
        done = subprocess.run(cli(overrides, "cluster", "up"), capture_output=True, text=True,
                              timeout=240, cwd=REPO_ROOT, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        daemons = [p.pid for p in running_processes(settings)]
        assert len(daemons) == 2, done.stdout  # the JobManager and one TaskManager
        done = subprocess.run(cli(overrides, "cluster", "down"), capture_output=True, text=True,
                              timeout=120, cwd=REPO_ROOT, check=False)
        assert done.returncode == 0 and "cluster: stopped" in done.stdout, done.stdout
        assert live(daemons, within_s=0) == []
    finally:
        cluster_down(settings, log=lambda _: None)


@pytest.mark.skipif(binary() is None, reason=INSTALL_HINT)
def test_prometheus_up_and_down_leave_no_process(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    overrides = [f"local.state_dir={tmp_path / 'kafka'}"]
    settings = load_settings(overrides=overrides)
    args = ("--listen", f"127.0.0.1:{port}")
    try:
        done = subprocess.run(cli(overrides, "prometheus", "up", *args), capture_output=True,
                              text=True, timeout=120, cwd=REPO_ROOT, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        pid = int(pid_file(settings).read_text())
        server = psutil.Process(pid)
        assert server.name() == "prometheus"
        assert os.getsid(pid) == pid  # detached: no signal to our session reaches it
        assert str(state_dir(settings)) in " ".join(server.cmdline())
        done = subprocess.run(cli(overrides, "prometheus", "down", *args), capture_output=True,
                              text=True, timeout=60, cwd=REPO_ROOT, check=False)
        assert done.returncode == 0 and f"stopped (pid {pid})" in done.stdout, done.stdout
        assert live([pid], within_s=0) == []
    finally:
        subprocess.run(cli(overrides, "prometheus", "down", *args), capture_output=True,
                       timeout=60, cwd=REPO_ROOT, check=False)
