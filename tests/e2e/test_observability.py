"""Observability end to end: a real Prometheus scrapes the real job and producer.

Starts the Debian ``prometheus`` binary (1 s scrape and rule interval) with the config of
``freshrec prometheus up`` pointed at a real job (Flink MiniCluster, reporter on a free
port) on the suite's real Kafka broker and at ``freshrec produce --metrics-port``; sends
traffic with invalid records, duplicates, item upserts and forget_user so every counter
moves; then asserts through Prometheus's HTTP API that

* every metric of ``freshrec_common.metrics.JOB_METRICS`` (histograms: the ``_bucket`` series),
  of the producer and of ``freshrec serve`` (asked for lists and similar items all along)
  has samples,
* every expression of every panel of the Grafana dashboard returns data (latency
  quantiles a number), and every alert and recording rule evaluates without error,

and runs ``promtool check config`` / ``check rules`` / ``test rules``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from devstack.processes import free_ports
from devstack.prometheus import (
    CONFIG_TEMPLATE,
    DASHBOARD,
    RULE_TESTS_DIR,
    RULES_DIR,
    PrometheusServer,
    binary,
    render_config,
    write_config,
)
from freshrec_common.metrics import JOB_METRICS, PROCESS_METRICS, SERVE_METRICS, exported_names
from freshrec_common.polling import wait_until
from schemas.events import Event
from tests.integration.job_harness import REPO_ROOT, JobProcess, job_settings
from tests.integration.serve_harness import ServeProcess

pytestmark = pytest.mark.timeout(480)

PROMETHEUS = binary("prometheus")
PROMTOOL = binary("promtool")
RATE_INTERVAL = "20s"  # stands for Grafana's $__rate_interval (scrape interval 1 s)
METRICS_DEADLINE_S = 240
MALFORMED: list[bytes | None] = [
    b"\xff\xfe\x00garbage",
    None,
    b'{"event_id": "x1", "event_type": "view"',
    b'{"event_id":"x2","event_type":"teleport","user_id":"u","item_id":"i","ts":1760000000000}',
    b'{"event_id":"x3","event_type":"view","user_id":"u","ts":1760000000000}',
]


def _require_prometheus() -> None:
    if PROMETHEUS is None or PROMTOOL is None:
        msg = ("PROMETHEUS NOT INSTALLED: the observability e2e test is SKIPPED. Install "
               "Debian's `prometheus` package (make setup as root does it): sudo apt-get "
               "install -y --no-install-recommends prometheus")
        warnings.warn(msg, stacklevel=2)
        pytest.skip(msg)


def dashboard_expressions() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
            out.append((f"{panel['title']} / {target.get('legendFormat', '')}", expr))
    return out


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120,
                          check=False)


def _live_events(n_users: int, offset: int) -> list[Event]:
    now = int(time.time() * 1000)
    events = []
    for u in range(n_users):
        user = f"obs-user-{u}"
        for j in range(3):
            events.append(Event(f"obs-{offset}-{u}-{j}", "view", now + j, user_id=user,
                                item_id=f"obs-item-{(u + j) % 7}"))
    return events


def _send_special_traffic(job: JobProcess) -> None:
    """Invalid records, duplicates, item upserts and forget_user (every counter moves)."""
    now = int(time.time() * 1000)
    job.send_events(Event(f"obs-up-{i}", "item_upsert", now, item_id=f"obs-item-{i}",
                          category="obs", brand="b", price=1.0 + i, title=f"item {i}")
                    for i in range(7))
    views = _live_events(12, 0)
    job.send_events(views)
    job.send_events(views[:10])  # the same event_ids again: duplicates dropped
    for value in MALFORMED:
        job.send_raw(b"obs", value)
    job.flush()


def _forget(job: JobProcess) -> None:
    now = int(time.time() * 1000)
    job.send_events(Event(f"obs-forget-{u}", "forget_user", now, user_id=f"obs-user-{u}")
                    for u in range(3))


class _Storefront(threading.Thread):
    """Asks ``freshrec serve`` for lists and similar items twice a second, so its request,
    latency and staleness series keep moving while the test watches them."""

    def __init__(self, serve: ServeProcess) -> None:
        super().__init__(daemon=True)
        self.serve = serve
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.wait(0.5):
            n += 1
            try:
                self.serve.get(f"/v1/users/obs-user-{3 + n % 9}/recommendations", timeout=2)
                self.serve.get(f"/v1/items/obs-item-{n % 7}/similar", timeout=2)
            except OSError:  # not listening yet
                pass

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)


def _missing(server: PrometheusServer, names: list[str]) -> list[str]:
    return [name for name in names if not server.query(f"count({name})")]


def test_every_metric_and_panel_has_data_in_prometheus(kafka_broker, tmp_path: Path) -> None:
    _require_prometheus()
    job_port, produce_port, web_port = free_ports(3)
    # An experiment runs, so the per-variant counters and the dashboard's experiment row
    # have data too.
    experiment = tmp_path / "experiment.toml"
    experiment.write_text('key = "e2e"\n[variants.model]\nshare = 0.5\n'
                          '[variants.trending]\nshare = 0.5\ntrending_only = true\n')
    settings, overrides = job_settings(
        kafka_broker.settings, tmp_path,
        [f"job.metrics_port={job_port}", f"experiments.file={experiment}"])
    serve = ServeProcess([*overrides, f"serve.store_dir={tmp_path / 'serve'}"],
                         tmp_path / "serve.log")
    targets = {"freshrec-flink": [f"127.0.0.1:{job_port}"], "freshrec-flink-cluster": [],
               "freshrec-produce": [f"127.0.0.1:{produce_port}"], "freshrec-replay": [],
               "freshrec-serve": [f"127.0.0.1:{serve.port}"]}
    config = write_config(render_config(targets, scrape_interval="1s"),
                          tmp_path / "prometheus" / "prometheus.yml")
    checked = promtool("check", "config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr

    server = PrometheusServer(config, tmp_path / "prometheus" / "data", f"127.0.0.1:{web_port}",
                              tmp_path / "prometheus" / "prometheus.log")
    job = JobProcess(settings, overrides, tmp_path / "job.log")
    producer: subprocess.Popen[bytes] | None = None
    storefront = _Storefront(serve)
    try:
        server.start()
        job.start()
        serve.start()
        storefront.start()
        # The real CLI with its /metrics; it keeps sending until the test stops it.
        producer = subprocess.Popen(
            [sys.executable, "-m", "freshrec.cli", *[a for o in overrides for a in ("--set", o)],
             "produce", "--generator", "--count", "1000000", "--rate", "40", "--users", "80",
             "--items", "400", "--metrics-port", str(produce_port), "--no-progress"],
            cwd=REPO_ROOT, stdout=(tmp_path / "produce.log").open("ab"),
            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True)
        _send_special_traffic(job)

        wanted = [n for spec in JOB_METRICS.values() for n in exported_names(spec)]
        wanted += [n for n in PROCESS_METRICS if n.startswith("freshrec_produce_")]
        wanted += [n + "_bucket" if spec.kind == "histogram" else n
                   for n, spec in SERVE_METRICS.items()]
        missing = wanted
        forgotten = False

        def all_exported() -> bool:
            nonlocal missing, forgotten
            job.assert_alive()
            assert producer.poll() is None, (tmp_path / "produce.log").read_text()
            missing = _missing(server, wanted)
            published = server.query(
                "sum(flink_taskmanager_job_task_operator_freshrec_job_"
                "recommendations_published_total)")
            if published and float(published[0]["value"][1]) > 0 and not forgotten:
                _forget(job)  # users exist now: their state is deleted, tombstones published
                job.send_events(_live_events(12, 1))  # second lists: live quality moves
                forgotten = True
            return not missing and forgotten

        wait_until(all_exported, METRICS_DEADLINE_S, interval_s=3)
        problems = []
        if missing:
            problems.append(f"no samples in Prometheus after {METRICS_DEADLINE_S}s for: "
                            f"{missing}")

        # Rate windows need two samples and rules a first evaluation: poll, and report what
        # is still missing at the deadline.
        late: list[str] = []

        def served() -> bool:
            nonlocal late
            late = _serving_problems(server)
            return not late

        wait_until(served, 60, interval_s=3)
        problems += late
        assert not problems, "\n".join(problems) + f"\njob log:\n{job.log_tail(15)}"
    finally:
        storefront.stop()
        assert serve.stop() == 143, serve.log_tail()  # SIGTERM: 128 + 15, as every command
        if producer is not None and producer.poll() is None:
            os.killpg(producer.pid, signal.SIGKILL)
            producer.wait(timeout=30)
        job.stop()
        server.stop()


def _serving_problems(server: PrometheusServer) -> list[str]:
    """What the dashboard, the rules and the scrape targets lack right now."""
    problems = []
    empty = []
    for what, expr in dashboard_expressions():
        result = server.query(expr)
        if not result:
            empty.append(f"{what}: {expr}")
        elif expr.startswith("histogram_quantile"):
            values = [float(r["value"][1]) for r in result]
            if not any(math.isfinite(v) for v in values):
                empty.append(f"{what}: {expr} -> {values}")
    if empty:
        problems.append("dashboard expressions without data:\n" + "\n".join(empty))
    rules = server.query_rules()
    bad = [f"{r['name']}: {r.get('lastError')}" for g in rules for r in g["rules"]
           if r.get("health") not in ("ok",)]
    if bad:
        problems.append(f"rules that do not evaluate: {bad}")
    groups = {g["name"] for g in rules}
    if not groups >= {"freshrec-availability", "freshrec-pipeline", "freshrec-quality",
                      "freshrec-latency-histograms"}:
        problems.append(f"rule groups loaded: {sorted(groups)}")
    down = server.query('up{job=~"freshrec-flink|freshrec-produce|freshrec-serve"} == 0')
    if down:
        problems.append(f"targets down: {down}")
    return problems


def test_promtool_checks_pass() -> None:
    _require_prometheus()
    for args in (("check", "config", str(CONFIG_TEMPLATE)),
                 ("check", "rules", *map(str, sorted(RULES_DIR.glob("*.yml")))),
                 ("test", "rules", *map(str, sorted(RULE_TESTS_DIR.glob("*.yml"))))):
        done = promtool(*args)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"
