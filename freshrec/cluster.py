"""``freshrec cluster up|down|status``, ``submit``, ``savepoint`` and ``cancel``: the local
Flink standalone session cluster (:mod:`devstack.flink_cluster`) and the job on it
(:mod:`devstack.flink_submit`)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import urllib.error
from collections.abc import Callable
from typing import Any

from devstack.flink_cluster import cluster_down, cluster_status, cluster_up, prometheus_ports
from devstack.flink_config import ClusterError, ClusterPaths, rest_url
from devstack.flink_submit import cancel, savepoint, submit
from freshrec_common.settings import Settings
from freshrec_common.settings_args import settings_args


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
