"""The job on the local Flink cluster: submit, savepoint, stop-with-savepoint, cancel.

:func:`submit` runs ``bin/flink run -d -py flink_jobs/recommender_job.py`` with the venv's
Python as client and worker interpreter; :func:`savepoint` and :func:`cancel` wrap ``flink
savepoint``, ``flink stop --savepointPath`` (stop-with-savepoint) and ``flink cancel``, and
``submit(from_savepoint=PATH)`` resumes (``flink run -s PATH``).

How the job's code reaches the workers: the project is installed (editable) in the venv,
and ``python.executable`` of the cluster is that venv's interpreter, so the TaskManagers
(Python runs inside them, thread mode) import ``flink_jobs``/``online_models``/``schemas``
exactly as the client does. The connector and glue jars are attached by the job itself
(``env.add_jars``: ``pipeline.jars`` are uploaded with the job graph). A cluster whose
workers lack the project would ship it with ``-pyfs`` instead (see docs/operations.md).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devstack.flink_config import (
    ClusterError,
    ClusterPaths,
    cluster_jars,
    flink_home,
    rest_url,
    script_env,
    stale_lib_jars,
    venv_python,
)
from devstack.flink_rest import overview, rest_get
from devstack.jars import ensure_jars
from devstack.processes import Log, say
from freshrec_common import kafka_config
from freshrec_common.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
JOB_SCRIPT = REPO_ROOT / "flink_jobs" / "recommender_job.py"


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
    python = venv_python()
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

    ensure_jars(settings)
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
