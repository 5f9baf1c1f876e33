"""``freshrec prometheus up|down|status|docs``: a local Prometheus (:mod:`devstack.prometheus`)
scraping the job, the cluster and the CLIs; ``docs`` regenerates the metrics table of
docs/metrics.md (:mod:`freshrec.metrics_docs`)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import urllib.error
from typing import Any

import devstack.prometheus
from devstack.processes import stop_processes
from devstack.prometheus import (
    DASHBOARD,
    DEFAULT_LISTEN,
    INSTALL_HINT,
    PRODUCE_METRICS_PORT,
    REPLAY_METRICS_PORT,
    REPO_ROOT,
    PrometheusError,
    PrometheusServer,
    binary,
    http_get_json,
    our_process,
    pid_file,
    render_config,
    scrape_targets,
    state_dir,
    write_config,
)
from freshrec.metrics_docs import DOCS, write_docs_table
from freshrec_common.settings import Settings


def up(args: argparse.Namespace, settings: Settings) -> int:
    if binary("prometheus") is None:
        print(f"freshrec prometheus: {INSTALL_HINT}", file=sys.stderr)
        return 1
    listen = args.listen
    running = our_process(settings)
    if running is not None:
        print(f"prometheus: already running (pid {running.pid}) on http://{listen}")
        return 0
    root = state_dir(settings)
    targets = scrape_targets(settings, args.produce_port, args.replay_port)
    config = write_config(render_config(targets, args.scrape_interval), root / "prometheus.yml")
    server = PrometheusServer(config, root / "data", listen, root / "prometheus.log")
    try:
        server.start(detach=True)
    except PrometheusError as exc:
        print(f"freshrec prometheus: {exc}", file=sys.stderr)
        return 1
    assert server.proc is not None
    pid_file(settings).write_text(f"{server.proc.pid}\n")
    print(f"prometheus: running (pid {server.proc.pid}), web UI and API on http://{listen}")
    print(f"prometheus: config {config}, data {root / 'data'}, log {server.log_path}")
    for job, hosts in targets.items():
        if hosts:
            shown = hosts[0] if len(hosts) == 1 else f"{hosts[0]} .. {hosts[-1]}"
            print(f"prometheus:   scrapes {job:<23} {shown}")
    print(f"prometheus: alerts http://{listen}/alerts; Grafana dashboard "
          f"{DASHBOARD.relative_to(REPO_ROOT)} (docs/metrics.md)")
    return 0


def down(args: argparse.Namespace, settings: Settings) -> int:
    proc = our_process(settings)
    if proc is None:
        print("prometheus: not running")
        pid_file(settings).unlink(missing_ok=True)
        return 0
    stop_processes([proc], timeout_s=20, what="prometheus", log=print)
    pid_file(settings).unlink(missing_ok=True)
    print(f"prometheus: stopped (pid {proc.pid})")
    return 0


def status(args: argparse.Namespace, settings: Settings) -> int:
    proc = our_process(settings)
    if proc is None:
        hint = "" if binary("prometheus") else f"\n{INSTALL_HINT}"
        print(f"prometheus: not running{hint}")
        return 1
    print(f"prometheus: running (pid {proc.pid}) on http://{args.listen}")
    with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
        doc = http_get_json(f"http://{args.listen}/api/v1/targets?state=active")
        for t in doc["data"]["activeTargets"]:
            print(f"  {t['labels']['job']:<23} {t['scrapeUrl']:<32} {t['health']}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "prometheus", help="a local Prometheus scraping the job, the cluster and our CLIs",
        description=devstack.prometheus.__doc__.split("\n\n>>>")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("up", "down", "status", "docs"),
                   help="docs: regenerate the metrics table of docs/metrics.md")
    p.add_argument("--listen", default=DEFAULT_LISTEN,
                   help=f"web UI and API address (default {DEFAULT_LISTEN})")
    p.add_argument("--produce-port", type=int, default=PRODUCE_METRICS_PORT,
                   help="scrape `freshrec produce --metrics-port` here (0: not at all)")
    p.add_argument("--replay-port", type=int, default=REPLAY_METRICS_PORT,
                   help="scrape `freshrec replay --metrics-port` here (0: not at all)")
    p.add_argument("--scrape-interval", default="5s", help="scrape and rule interval")
    p.set_defaults(func=lambda args, settings: {"up": up, "down": down, "status": status,
                                                "docs": docs}[args.action](args, settings))


def docs(args: argparse.Namespace, settings: Settings) -> int:
    changed = write_docs_table()
    print(f"{DOCS.relative_to(REPO_ROOT)}: {'updated' if changed else 'up to date'}")
    return 0
