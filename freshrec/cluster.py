"""A real Flink standalone session cluster on this machine, and the job submitted to it.

``freshrec cluster up|down|status`` runs the scripts shipped in the apache-flink wheel
(``FLINK_HOME`` = the installed ``pyflink`` package): ``bin/jobmanager.sh start`` once and
``bin/taskmanager.sh start`` once per TaskManager, all bound to ``cluster.host``. Nothing in
the wheel is modified: the processes read a generated ``config.yaml`` from their own
``FLINK_CONF_DIR`` and write logs and pid files under ``cluster.state_dir``::

    <state_dir>/conf/config.yaml   generated from the cluster.* settings (rewritten on up)
    <state_dir>/conf/log4j*.properties, logback*.xml   copied from the wheel
    <state_dir>/lib/               FLINK_LIB_DIR: links to the wheel's lib/*.jar and
                                   opt/flink-python-*.jar (see :func:`link_lib_dir`)
    <state_dir>/log/flink-*-standalonesession-0-*.log|.out, ...-taskexecutor-N-*.log|.out
    <state_dir>/pid/flink-*-standalonesession.pid, flink-*-taskexecutor.pid
    <state_dir>/last-job           id of the last job `freshrec submit` started

``freshrec submit`` runs ``bin/flink run -d -py flink_jobs/recommender_job.py`` with the
venv's Python as client and worker interpreter; ``freshrec savepoint`` and ``freshrec
cancel`` wrap ``flink savepoint`` and ``flink stop --savepointPath`` (stop-with-savepoint),
and ``freshrec submit --from-savepoint PATH`` resumes (``flink run -s PATH``).

How the job's code reaches the workers: the project is installed (editable) in the venv,
and ``python.executable`` of the cluster is that venv's interpreter, so the TaskManagers
(Python runs inside them, thread mode) import ``flink_jobs``/``online_models``/``schemas``
exactly as the client does. The connector and glue jars are attached by the job itself
(``env.add_jars``: ``pipeline.jars`` are uploaded with the job graph). A cluster whose
workers lack the project would ship it with ``-pyfs`` instead (see docs/operations.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from freshrec import kafka_config
from freshrec.polling import wait_until
from freshrec.processes import (
    Log,
    cmdline,
    locked,
    port_in_use,
    say,
    stop_processes,
)
from freshrec.settings import Settings
from freshrec.settings_args import settings_args

REPO_ROOT = Path(__file__).resolve().parent.parent
JOB_SCRIPT = REPO_ROOT / "flink_jobs" / "recommender_job.py"
PROMETHEUS_FACTORY = "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
_JM = "standalonesession"
_TM = "taskexecutor"
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


# --------------------------------------------------------------------------- layout


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


def _venv_python() -> str:
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
    from freshrec.local_kafka import LocalKafkaError, check_java

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
    python = _venv_python()
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
    from flink_jobs.recommender_job import job_jars

    jars = list(job_jars(settings))
    try:
        from flink_jobs.glue import build_metrics_jar
    except ImportError:  # an older tree without the metrics glue
        return jars
    return [*jars, build_metrics_jar(Path(settings.local.cache_dir).resolve() / "flink")]


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
    venv_bin = str(Path(_venv_python()).parent)
    env.update({
        "FLINK_HOME": str(home),
        "FLINK_CONF_DIR": str(paths.conf),
        "FLINK_LIB_DIR": str(paths.lib),
        "FLINK_LOG_DIR": str(paths.log),
        "FLINK_PID_DIR": str(paths.pid),
        "PATH": os.pathsep.join([venv_bin, env.get("PATH", "")]),
        # bin/find-flink-home.sh runs find_flink_home.py with this interpreter.
        "PYFLINK_PYTHON": _venv_python(),
        # Names the log and pid files (flink-freshrec-taskexecutor-0-<host>.log).
        "FLINK_IDENT_STRING": "freshrec",
        "JAVA_HOME": java_home(),
    })
    # A HADOOP_CLASSPATH left by a local job (the reporter jar) must not reach the cluster.
    env.pop("HADOOP_CLASSPATH", None)
    return env


# --------------------------------------------------------------------------- processes


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


def rest_get(settings: Settings, path: str, timeout: float = 15.0) -> Any:
    """GET a REST API path (``/overview``, ``/jobs/<id>``...) and decode the JSON."""
    with urllib.request.urlopen(rest_url(settings) + path, timeout=timeout) as resp:
        return json.loads(resp.read())


def overview(settings: Settings) -> dict[str, Any] | None:
    """``/overview`` of the JobManager, None when it does not answer."""
    try:
        return rest_get(settings, "/overview", timeout=3.0)
    except (OSError, ValueError):
        return None


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
        except KeyboardInterrupt:  # processes.Stopped: undo this start, keep what ran before
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


# --------------------------------------------------------------------------- jobs


def flink_cli(settings: Settings, *args: str, timeout: float = 300) -> str:
    """Run ``bin/flink ARGS`` against this cluster; the combined output, or ClusterError."""
    home = flink_home()
    env = script_env(settings, home)
    cmd = ["bash", str(home / "bin" / "flink"), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False, cwd=REPO_ROOT)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        lines = out.strip().splitlines()
        causes = [t for t in lines if "Caused by" in t or "Error" in t or "Exception" in t]
        shown = "\n".join([*causes[-8:], "...", *lines[-25:]])
        raise ClusterError(f"flink {args[0]} failed (exit {proc.returncode}):\n{shown}")
    return out


def job_arguments(settings: Settings, parallelism: int, passthrough: Sequence[str] = ()
                  ) -> list[str]:
    """Arguments of ``recommender_job.py`` on the cluster: the caller's settings, then the
    cluster's parallelism and absolute paths (the client may run in another directory)."""
    return [
        *passthrough,
        "--set", f"job.parallelism={parallelism}",
        "--set", f"local.cache_dir={Path(settings.local.cache_dir).expanduser().resolve()}",
        "--set", f"job.checkpoint_dir={Path(settings.job.checkpoint_dir).expanduser().resolve()}",
        # Metric reporters of a cluster come from its config.yaml (cluster up), not the job.
        "--set", "job.metrics_port=0",
    ]


def submit_command(settings: Settings, parallelism: int, from_savepoint: str | None = None,
                   allow_non_restored: bool = False, passthrough: Sequence[str] = ()
                   ) -> list[str]:
    """The ``flink run`` arguments (after ``bin/flink``) that submit the job detached."""
    python = _venv_python()
    cmd = ["run", "--detached", "--parallelism", str(parallelism)]
    if from_savepoint:
        cmd += ["--fromSavepoint", from_savepoint]
        if allow_non_restored:
            cmd += ["--allowNonRestoredState"]
    cmd += ["-pyclientexec", python, "-pyexec", python, "--python", str(JOB_SCRIPT)]
    return cmd + job_arguments(settings, parallelism, passthrough)


@dataclass(frozen=True)
class Submitted:
    job_id: str
    output: str


_JOB_ID = re.compile(r"JobID ([0-9a-f]{32})")


def submit(settings: Settings, parallelism: int | None = None, from_savepoint: str | None = None,
           allow_non_restored: bool = False, passthrough: Sequence[str] = (),
           log: Log = say) -> Submitted:
    """Submit the job (detached) and return its id once the cluster accepted it."""
    p = parallelism or settings.cluster.parallelism
    if from_savepoint:
        sp = Path(from_savepoint.removeprefix("file:")).expanduser()
        if "://" not in from_savepoint and not (sp / "_metadata").is_file():
            raise ClusterError(f"{from_savepoint} is not a savepoint or checkpoint (no _metadata)")
        if "://" not in from_savepoint:
            from_savepoint = str(sp.resolve())
    # A job without its broker would only restart in a loop on the cluster: say so here.
    kafka_config.check_reachable(settings)
    ov = overview(settings)
    if ov is None:
        raise ClusterError(f"no Flink cluster answers at {rest_url(settings)}: start it with"
                           " `freshrec cluster up`")
    if ov.get("slots-available", 0) < p:
        raise ClusterError(
            f"parallelism {p} needs {p} free slots, the cluster has {ov.get('slots-available')}"
            f" of {ov.get('slots-total')} free (running jobs: {ov.get('jobs-running')}); cancel a"
            " job, lower --parallelism or raise cluster.taskmanagers/slots_per_taskmanager")
    # Fetch/build the jars here, where errors are readable; the job attaches the same paths.
    from flink_jobs.recommender_job import job_jars  # pyflink: seconds to import

    jars = job_jars(settings)
    stale = stale_lib_jars(settings, cluster_jars(settings))
    if stale:
        raise ClusterError(
            f"the running cluster was started before {', '.join(stale)} was built (the Java glue"
            " changed): restart it with `freshrec cancel` (keeps the state), `freshrec cluster"
            " down`, `freshrec cluster up`, then submit again")
    log(f"submit: jars {', '.join(j.name for j in jars)}")
    out = flink_cli(settings, *submit_command(settings, p, from_savepoint, allow_non_restored,
                                              passthrough))
    m = _JOB_ID.search(out)
    if not m:
        raise ClusterError(f"flink run printed no job id:\n{out[-3000:]}")
    paths = ClusterPaths.of(settings)
    paths.last_job.write_text(m.group(1) + "\n", "utf-8")
    return Submitted(m.group(1), out)


def running_job_id(settings: Settings, job_id: str | None = None) -> str:
    """``job_id`` if given, else the one running (or restarting) job on the cluster."""
    if job_id:
        return job_id
    if overview(settings) is None:
        raise ClusterError(f"no Flink cluster answers at {rest_url(settings)}")
    jobs = [j for j in rest_get(settings, "/jobs/overview").get("jobs", [])
            if j.get("state") in ("RUNNING", "CREATED", "RESTARTING", "INITIALIZING")]
    if not jobs:
        raise ClusterError("no job is running on the cluster")
    if len(jobs) > 1:
        listing = ", ".join(f"{j['jid']} ({j['name']})" for j in jobs)
        raise ClusterError(f"several jobs are running ({listing}): pass --job ID")
    return jobs[0]["jid"]


_SAVEPOINT_PATH = re.compile(r"(?:Savepoint completed\. Path|Savepoint stored in)[:\s]+(\S+)")


def _savepoint_path(out: str) -> str:
    m = _SAVEPOINT_PATH.search(out)
    if not m:
        raise ClusterError(f"flink printed no savepoint path:\n{out[-3000:]}")
    path = m.group(1)
    return path.removeprefix("file:").replace("///", "/", 1) if path.startswith("file:") else path


def savepoint(settings: Settings, job_id: str | None = None, stop: bool = False,
              timeout_s: float = 300) -> tuple[str, str]:
    """Take a savepoint of the job (``stop``: stop-with-savepoint); (job id, savepoint path)."""
    jid = running_job_id(settings, job_id)
    target = str(ClusterPaths.of(settings).savepoints)
    if stop:
        out = flink_cli(settings, "stop", "--savepointPath", target, jid, timeout=timeout_s)
    else:
        out = flink_cli(settings, "savepoint", jid, target, timeout=timeout_s)
    return jid, _savepoint_path(out)


def cancel(settings: Settings, job_id: str | None = None) -> str:
    """Cancel without a savepoint (state after the last checkpoint is lost)."""
    jid = running_job_id(settings, job_id)
    flink_cli(settings, "cancel", jid)
    return jid


def job_detail(settings: Settings, job_id: str) -> dict[str, Any]:
    return rest_get(settings, f"/jobs/{job_id}")


def subtask_hosts(settings: Settings, job_id: str) -> dict[str, set[str]]:
    """vertex name -> the TaskManager ids its subtasks run on (REST ``/vertices/<vid>``)."""
    out: dict[str, set[str]] = {}
    for vertex in job_detail(settings, job_id).get("vertices", []):
        detail = rest_get(settings, f"/jobs/{job_id}/vertices/{vertex['id']}")
        out[vertex["name"]] = {
            st.get("taskmanager-id") or st.get("host", "?") for st in detail.get("subtasks", [])}
    return out


# --------------------------------------------------------------------------- CLI


def _cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    info = cluster_up(settings)
    how = "already running" if info.already_running else f"started in {info.started_in_s:.1f}s"
    print(f"cluster: Flink {info.flink_version} {how}: {info.taskmanagers} TaskManager(s),"
          f" {info.slots_available}/{info.slots_total} slots free")
    print(f"cluster: web UI and REST API {info.rest_url}")
    ports = prometheus_ports(settings)
    for p in info.processes:
        metrics = f", metrics http://{settings.cluster.host}:{ports[p.pid]}/metrics" \
            if p.pid in ports else ""
        print(f"  {p.role:<11} pid {p.pid}{metrics}")
    print(f"cluster: logs in {ClusterPaths.of(settings).log}; submit the job with"
          " `freshrec submit`")
    return 0


def _cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    cluster_down(settings)
    return 0


def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    st = cluster_status(settings)
    paths = ClusterPaths.of(settings)
    if not st.processes:
        print(f"cluster: stopped (state in {paths.state})")
        return 3
    ports = prometheus_ports(settings)
    if st.overview is None:
        print(f"cluster: processes running but the REST API at {st.rest_url} does not answer"
              f" (starting, or the JobManager died: `freshrec cluster up` restarts it; logs in"
              f" {paths.log})")
    else:
        ov = st.overview
        print(f"cluster: running, Flink {ov.get('flink-version')}; web UI {st.rest_url}")
        print(f"cluster: {ov.get('taskmanagers')} TaskManager(s), {ov.get('slots-available')}/"
              f"{ov.get('slots-total')} slots free, jobs running {ov.get('jobs-running')},"
              f" finished {ov.get('jobs-finished')}, cancelled {ov.get('jobs-cancelled')},"
              f" failed {ov.get('jobs-failed')}")
    for p in st.processes:
        metrics = f"  metrics :{ports[p.pid]}" if p.pid in ports else ""
        print(f"  {p.role:<11} pid {p.pid:<8}{metrics}  log {p.log}")
    for j in st.jobs:
        if j.get("state") in ("RUNNING", "RESTARTING", "CREATED", "INITIALIZING", "FAILING"):
            print(f"  job {j['jid']} {j['name']!r} {j['state']}"
                  f"  {st.rest_url}/#/job/running/{j['jid']}/overview")
    if st.overview is None:
        return 1
    want = settings.cluster.taskmanagers
    if st.overview.get("taskmanagers", 0) < want:
        print(f"cluster: only {st.overview.get('taskmanagers')} of {want} TaskManagers are"
              " registered; `freshrec cluster up` starts the missing ones")
        return 1
    return 0


def _cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    sub = submit(settings, args.parallelism, args.from_savepoint, args.allow_non_restored_state,
                 settings_args(args))
    url = rest_url(settings)
    what = f" from {args.from_savepoint}" if args.from_savepoint else ""
    print(f"submit: job {sub.job_id} submitted{what} at parallelism"
          f" {args.parallelism or settings.cluster.parallelism}")
    print(f"submit: web UI {url}/#/job/running/{sub.job_id}/overview")
    print(f"submit: REST   {url}/jobs/{sub.job_id}")
    print(f"submit: logs   {ClusterPaths.of(settings).log} (the job's Python output is in the"
          " taskexecutor logs); recommendations: `freshrec tail`")
    print("submit: stop it keeping its state with `freshrec cancel` (stop-with-savepoint)")
    return 0


def _cmd_savepoint(args: argparse.Namespace, settings: Settings) -> int:
    jid, path = savepoint(settings, args.job, stop=args.stop)
    verb = "stopped with a savepoint" if args.stop else "savepoint taken (job keeps running)"
    print(f"savepoint: job {jid} {verb}: {path}")
    print(f"savepoint: resume with `freshrec submit --from-savepoint {path}`")
    return 0


def _cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    if args.no_savepoint:
        jid = cancel(settings, args.job)
        print(f"cancel: job {jid} cancelled without a savepoint (retained checkpoints are in"
              f" {ClusterPaths.of(settings).checkpoints})")
        return 0
    jid, path = savepoint(settings, args.job, stop=True)
    print(f"cancel: job {jid} stopped with a savepoint: {path}")
    print(f"cancel: resume with `freshrec submit --from-savepoint {path}`")
    return 0


def _guard(func: Callable[[argparse.Namespace, Settings], int]) -> Any:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        try:
            return func(args, settings)
        except (ClusterError, subprocess.TimeoutExpired, urllib.error.URLError) as exc:
            print(f"freshrec {args.command}: error: {exc}", file=sys.stderr)
            return 1

    return run


def register(subparsers: Any) -> None:
    """Add ``freshrec cluster up|down|status``, ``submit``, ``savepoint`` and ``cancel``."""
    parser = subparsers.add_parser(
        "cluster", help="a local Flink standalone session cluster (1 JobManager + N TaskManagers)",
        description="A Flink standalone session cluster on cluster.host from the scripts in the"
                    " apache-flink wheel; config, logs and pids in cluster.state_dir.")
    sub = parser.add_subparsers(dest="cluster_command", required=True)
    sub.add_parser("up", help="start it (if not running), wait until every TaskManager is"
                   " registered").set_defaults(func=_guard(_cmd_up))
    sub.add_parser("down", help="stop every process of it (jobs are not savepointed)"
                   ).set_defaults(func=_guard(_cmd_down))
    sub.add_parser("status", help="processes, slots, jobs (exit 3 when stopped)"
                   ).set_defaults(func=_guard(_cmd_status))

    p = subparsers.add_parser("submit", help="submit the job to the cluster (flink run -py)")
    p.add_argument("--parallelism", "-p", type=int, default=None,
                   help="default: cluster.parallelism")
    p.add_argument("--from-savepoint", "-s", metavar="PATH",
                   help="resume from this savepoint or retained checkpoint (flink run -s)")
    p.add_argument("--allow-non-restored-state", "-n", action="store_true",
                   help="skip savepoint state of operators the job no longer has")
    p.set_defaults(func=_guard(_cmd_submit))

    p = subparsers.add_parser("savepoint", help="take a savepoint of the running job")
    p.add_argument("--job", help="job id (default: the one running job)")
    p.add_argument("--stop", action="store_true", help="stop the job with the savepoint")
    p.set_defaults(func=_guard(_cmd_savepoint))

    p = subparsers.add_parser("cancel", help="stop the job with a savepoint (stop-with-savepoint)")
    p.add_argument("--job", help="job id (default: the one running job)")
    p.add_argument("--no-savepoint", action="store_true",
                   help="cancel without a savepoint (state since the last checkpoint is lost)")
    p.set_defaults(func=_guard(_cmd_cancel))
