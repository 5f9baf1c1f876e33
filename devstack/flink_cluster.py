"""The processes of the local Flink standalone session cluster.

``freshrec cluster up|down|status`` runs the wheel's ``bin/jobmanager.sh start`` once and
``bin/taskmanager.sh start`` once per TaskManager, all bound to ``cluster.host``, with the
configuration of :mod:`devstack.flink_config`; a process is ours when its command line
names our conf dir.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from devstack.flink_config import (
    ClusterError,
    ClusterPaths,
    cluster_jars,
    flink_home,
    link_lib_dir,
    rest_url,
    script_env,
    write_conf_dir,
)
from devstack.flink_rest import overview, rest_get
from devstack.processes import Log, cmdline, locked, port_in_use, say, stop_processes
from freshrec_common.polling import wait_until
from freshrec_common.settings import Settings

_JM = "standalonesession"
_TM = "taskexecutor"


def _is_ours(pid: int, paths: ClusterPaths) -> bool:
    """True when ``pid`` is a Flink process started with our conf dir (not a reused pid)."""
    cmd = cmdline(pid)
    return bool(cmd) and f"--configDir {paths.conf}" in cmd


@dataclass(frozen=True)
class Process:
    role: str  # "jobmanager" or "taskmanager"
    pid: int
    log: Path | None


def _role(daemon: str) -> str:
    return "jobmanager" if daemon == _JM else "taskmanager"


def _log_of(pid: int) -> Path | None:
    m = re.search(r"-Dlog\.file=(\S+)", cmdline(pid) or "")
    return Path(m.group(1)) if m else None


def running_processes(settings: Settings) -> list[Process]:
    """The cluster's live processes: from the pid files, and any strays started with our
    conf dir whose pid file was lost (found by that unique path in their command line)."""
    paths = ClusterPaths.of(settings)
    found: dict[int, str] = {}
    for pid_file in paths.pid_files():
        daemon = _JM if _JM in pid_file.name else _TM
        for line in pid_file.read_text("utf-8", "replace").split():
            if line.isdigit() and _is_ours(int(line), paths):
                found[int(line)] = daemon
    for pid in psutil.pids():
        if pid not in found and _is_ours(pid, paths):
            cmd = cmdline(pid) or ""
            found[pid] = _JM if "StandaloneSessionClusterEntrypoint" in cmd else _TM
    return sorted((Process(_role(d), pid, _log_of(pid)) for pid, d in found.items()),
                  key=lambda p: (p.role, p.pid))


def _prune_pid_files(paths: ClusterPaths) -> None:
    """Drop dead or foreign pids from the pid files (flink-daemon.sh numbers logs by line)."""
    for pid_file in paths.pid_files():
        alive = [line for line in pid_file.read_text("utf-8", "replace").split()
                 if line.isdigit() and _is_ours(int(line), paths)]
        if alive:
            pid_file.write_text("\n".join(alive) + "\n", "utf-8")
        else:
            pid_file.unlink()


def _run_script(settings: Settings, script: str, *args: str, timeout: float = 60) -> str:
    home = flink_home()
    cmd = ["bash", str(home / "bin" / script), *args]
    proc = subprocess.run(cmd, env=script_env(settings, home), capture_output=True, text=True,
                          timeout=timeout, check=False, cwd=ClusterPaths.of(settings).state)
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise ClusterError(f"{script} {' '.join(args)} failed (exit {proc.returncode}): {out}")
    return out


def _log_tail(paths: ClusterPaths, lines: int = 30) -> str:
    logs = sorted(paths.log.glob("*.log"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return "(no log written)"
    errors: list[str] = []
    for log in logs:
        text = log.read_text("utf-8", "replace").splitlines()
        errors += [f"{log.name}: {t}" for t in text if " ERROR " in t or "Exception" in t][-5:]
    tail = logs[-1].read_text("utf-8", "replace").splitlines()[-lines:]
    return "\n".join([*errors[-10:], f"--- {logs[-1]}", *tail])


@dataclass(frozen=True)
class ClusterInfo:
    rest_url: str
    processes: tuple[Process, ...]
    taskmanagers: int
    slots_total: int
    slots_available: int
    jobs_running: int
    flink_version: str
    already_running: bool
    started_in_s: float


def _wait_ready(settings: Settings, timeout_s: float) -> dict[str, Any]:
    c = settings.cluster
    paths = ClusterPaths.of(settings)
    last: dict[str, Any] | None = None

    def ready() -> dict[str, Any] | None:
        nonlocal last
        last = overview(settings)
        if (last is not None and last.get("taskmanagers", 0) >= c.taskmanagers
                and last.get("slots-total", 0) >= c.taskmanagers * c.slots_per_taskmanager):
            return last
        if not any(p.role == "jobmanager" for p in running_processes(settings)):
            raise ClusterError(f"the JobManager exited during start-up:\n{_log_tail(paths)}")
        return None

    got = wait_until(ready, timeout_s, interval_s=0.5)
    if got is None:
        raise ClusterError(
            f"the cluster was not ready within {c.start_timeout_s:.0f}s (cluster.start_timeout_s);"
            f" last /overview: {last}\n{_log_tail(paths)}")
    return got


def cluster_up(settings: Settings, *, log: Log = say) -> ClusterInfo:
    """Start the JobManager and the missing TaskManagers; safe to call when running."""
    c = settings.cluster
    paths = ClusterPaths.of(settings)
    started = time.monotonic()
    with locked(paths.state / ".lock"):
        procs = running_processes(settings)
        _prune_pid_files(paths)
        jms = [p for p in procs if p.role == "jobmanager"]
        tms = [p for p in procs if p.role == "taskmanager"]
        already = bool(jms) and len(tms) >= c.taskmanagers
        if not jms:
            if tms:  # TaskManagers of a JobManager that died: restart all cleanly
                log(f"cluster: {len(tms)} stray TaskManager(s) without a JobManager; stopping")
                _stop(tms, log=log)
                _prune_pid_files(paths)
                tms = []
            if port_in_use(c.host, c.rest_port):
                raise ClusterError(
                    f"{c.host}:{c.rest_port} is already in use by another program (another Flink"
                    " cluster?): stop it or choose another cluster.rest_port")
            if port_in_use(c.host, c.rpc_port):
                raise ClusterError(f"{c.host}:{c.rpc_port} is already in use: choose another"
                                   " cluster.rpc_port")
        home = flink_home()
        write_conf_dir(settings, home)
        before = {p.pid for p in procs}
        try:
            if not jms:
                link_lib_dir(settings, cluster_jars(settings), home)
                log(f"cluster: starting the JobManager on {c.host} (REST {rest_url(settings)})")
                _run_script(settings, "jobmanager.sh", "start")
            missing = c.taskmanagers - len(tms)
            if missing > 0:
                log(f"cluster: starting {missing} TaskManager(s)")
                # In parallel: each script spends seconds parsing the config in a JVM before
                # flink-daemon.sh takes its lock on the pid dir.
                with ThreadPoolExecutor(missing) as pool:
                    list(pool.map(lambda _: _run_script(settings, "taskmanager.sh", "start"),
                                  range(missing)))
            ov = _wait_ready(settings, c.start_timeout_s)
        except KeyboardInterrupt:  # a stop signal: undo this start, keep what ran before
            new = [p for p in running_processes(settings) if p.pid not in before]
            log(f"cluster: start interrupted; stopping the {len(new)} process(es) it started")
            for role in ("taskmanager", "jobmanager"):
                _stop([p for p in new if p.role == role], log=log)
            _prune_pid_files(paths)
            raise
    return ClusterInfo(
        rest_url=rest_url(settings),
        processes=tuple(running_processes(settings)),
        taskmanagers=ov.get("taskmanagers", 0),
        slots_total=ov.get("slots-total", 0),
        slots_available=ov.get("slots-available", 0),
        jobs_running=ov.get("jobs-running", 0),
        flink_version=ov.get("flink-version", "?"),
        already_running=already,
        started_in_s=time.monotonic() - started,
    )


def _stop(procs: Sequence[Process], *, timeout_s: float = 20.0, log: Log = say) -> None:
    live = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            live.append(psutil.Process(p.pid))
    stop_processes(live, timeout_s=timeout_s, what="cluster", log=log)


def cluster_down(settings: Settings, *, log: Log = say) -> int:
    """Stop every process of the cluster (TaskManagers first); returns how many were running.

    Running jobs are not savepointed: use ``freshrec cancel`` first to keep their state.
    """
    paths = ClusterPaths.of(settings)
    with locked(paths.state / ".lock"):
        procs = running_processes(settings)
        tms = [p for p in procs if p.role == "taskmanager"]
        jms = [p for p in procs if p.role == "jobmanager"]
        if tms:
            log(f"cluster: stopping {len(tms)} TaskManager(s) (pids"
                f" {', '.join(str(p.pid) for p in tms)})")
            _stop(tms, log=log)
        if jms:
            log(f"cluster: stopping the JobManager (pid {', '.join(str(p.pid) for p in jms)})")
            _stop(jms, log=log)
        for pid_file in paths.pid_files():
            pid_file.unlink(missing_ok=True)
        if not procs:
            log(f"cluster: not running (state in {paths.state})")
        else:
            log("cluster: stopped")
    return len(procs)


@dataclass(frozen=True)
class ClusterStatus:
    running: bool
    rest_url: str
    processes: tuple[Process, ...]
    overview: dict[str, Any] | None
    jobs: tuple[dict[str, Any], ...]
    taskmanagers: tuple[dict[str, Any], ...]


def cluster_status(settings: Settings) -> ClusterStatus:
    procs = tuple(running_processes(settings))
    ov = overview(settings) if any(p.role == "jobmanager" for p in procs) else None
    jobs: tuple[dict[str, Any], ...] = ()
    tms: tuple[dict[str, Any], ...] = ()
    if ov is not None:
        with contextlib.suppress(OSError, ValueError):
            jobs = tuple(rest_get(settings, "/jobs/overview").get("jobs", []))
        with contextlib.suppress(OSError, ValueError):
            tms = tuple(rest_get(settings, "/taskmanagers").get("taskmanagers", []))
    return ClusterStatus(running=ov is not None, rest_url=rest_url(settings), processes=procs,
                         overview=ov, jobs=jobs, taskmanagers=tms)


def prometheus_ports(settings: Settings) -> dict[int, int]:
    """pid -> the port its Prometheus reporter bound (read from the process's log)."""
    out: dict[int, int] = {}
    for p in running_processes(settings):
        if p.log is None or not p.log.is_file():
            continue
        m = re.search(r"Started PrometheusReporter HTTP server on port (\d+)",
                      p.log.read_text("utf-8", "replace"))
        if m:
            out[p.pid] = int(m.group(1))
    return out
