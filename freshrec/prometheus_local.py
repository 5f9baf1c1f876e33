"""``freshrec prometheus up|down|status``: a local Prometheus scraping the local stack.

Runs the ``prometheus`` binary of Debian's ``prometheus`` package (installed by ``make
setup`` as root; see ``deploy/prometheus/install.sh``) with a configuration generated from
``deploy/prometheus/prometheus.yml``: the ports come from the settings (``job.metrics_port``,
``cluster.metrics_ports``) and the flags, the alert rules of ``deploy/prometheus/rules`` are
loaded, the data lives under ``.freshrec/prometheus`` and the web UI and API listen on
``127.0.0.1:9090``. It never touches the Debian service. Also holds the prometheus-client
metrics of ``freshrec replay --metrics-port`` (``ReplayMetrics``).

>>> targets = scrape_targets(load_settings(), produce_port=9300, replay_port=9301)
>>> targets["freshrec-flink"], targets["freshrec-flink-cluster"][:2]
(['127.0.0.1:9249'], ['127.0.0.1:9250', '127.0.0.1:9251'])
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from freshrec.polling import wait_until
from freshrec.processes import stop_processes
from freshrec.settings import Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_DIR = REPO_ROOT / "deploy" / "prometheus"
CONFIG_TEMPLATE = DEPLOY_DIR / "prometheus.yml"
RULES_DIR = DEPLOY_DIR / "rules"
RULE_TESTS_DIR = DEPLOY_DIR / "tests"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "freshrec.json"
# Conventional /metrics ports of our own processes (prometheus.yml scrapes them).
PRODUCE_METRICS_PORT = 9300
REPLAY_METRICS_PORT = 9301
SERVE_PORT = 8000  # serve.port's default: the API and its /metrics
DEFAULT_LISTEN = "127.0.0.1:9090"
INSTALL_HINT = (
    "Prometheus is not installed. On Debian/Ubuntu it comes with promtool in the "
    "`prometheus` package: run `make setup` as root, or\n"
    "    sudo apt-get update && sudo apt-get install -y --no-install-recommends prometheus\n"
    "(the Debian service it ships is not needed; `freshrec prometheus up` runs its own). "
    "Elsewhere put Prometheus 2.x (prometheus and promtool) on PATH."
)


class PrometheusError(RuntimeError):
    """Prometheus is missing, would not start, or did not become ready."""


def binary(name: str = "prometheus") -> str | None:
    """Path of ``prometheus`` / ``promtool`` on PATH (or /usr/bin, Debian's place)."""
    found = shutil.which(name)
    if found is None and Path("/usr/bin", name).is_file():
        found = str(Path("/usr/bin", name))
    return found


def _port_range(spec: str) -> list[int]:
    first, _, last = spec.partition("-")
    return list(range(int(first), int(last or first) + 1))


def scrape_targets(settings: Settings, produce_port: int = PRODUCE_METRICS_PORT,
                   replay_port: int = REPLAY_METRICS_PORT) -> dict[str, list[str]]:
    """host:port targets of each scrape job of prometheus.yml, from the settings."""
    cluster_host = settings.cluster.host
    return {
        "freshrec-flink": ([f"127.0.0.1:{settings.job.metrics_port}"]
                           if settings.job.metrics_port > 0 else []),
        "freshrec-flink-cluster": [f"{cluster_host}:{p}"
                                   for p in _port_range(settings.cluster.metrics_ports)],
        "freshrec-produce": [f"127.0.0.1:{produce_port}"] if produce_port > 0 else [],
        "freshrec-replay": [f"127.0.0.1:{replay_port}"] if replay_port > 0 else [],
        "freshrec-serve": [f"127.0.0.1:{settings.serve.port}"],
    }


def load_yaml(path: Path) -> Any:
    from ruamel.yaml import YAML  # a dependency of apache-flink

    return YAML(typ="safe").load(path.read_text())


def render_config(targets: Mapping[str, Sequence[str]], scrape_interval: str = "5s",
                  rules_dir: Path = RULES_DIR) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with these targets, interval and absolute rules.

    A scrape job without targets is dropped; a job name not in the template is an error.
    """
    doc = load_yaml(CONFIG_TEMPLATE)
    doc["global"]["scrape_interval"] = scrape_interval
    doc["global"]["evaluation_interval"] = scrape_interval
    doc["rule_files"] = [str(rules_dir.resolve() / "*.yml")]
    known = {job["job_name"] for job in doc["scrape_configs"]}
    unknown = set(targets) - known
    if unknown:
        raise ValueError(f"no scrape job {sorted(unknown)} in {CONFIG_TEMPLATE}")
    jobs = []
    for job in doc["scrape_configs"]:
        wanted = list(targets.get(job["job_name"], job["static_configs"][0]["targets"]))
        if not wanted:
            continue
        job["static_configs"] = [{**job["static_configs"][0], "targets": wanted}]
        jobs.append(job)
    doc["scrape_configs"] = jobs
    return doc


def write_config(doc: Mapping[str, Any], path: Path) -> Path:
    """Write the config as JSON (valid YAML, no YAML writer needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def http_get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def is_ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/-/ready", timeout=2) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


class PrometheusServer:
    """One Prometheus process: ``start()`` waits until it is ready, ``stop()`` ends it."""

    def __init__(self, config: Path, data_dir: Path, listen: str = DEFAULT_LISTEN,
                 log_path: Path | None = None, retention: str = "15d") -> None:
        self.config, self.data_dir, self.listen = config, data_dir, listen
        self.log_path = log_path or data_dir.parent / "prometheus.log"
        self.retention = retention
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.listen}"

    def command(self) -> list[str]:
        exe = binary("prometheus")
        if exe is None:
            raise PrometheusError(INSTALL_HINT)
        return [exe, f"--config.file={self.config}", f"--storage.tsdb.path={self.data_dir}",
                f"--storage.tsdb.retention.time={self.retention}",
                f"--web.listen-address={self.listen}", "--web.enable-lifecycle"]

    def start(self, timeout_s: float = 60.0, detach: bool = False) -> PrometheusServer:
        cmd = self.command()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=detach)
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {proc.returncode}:\n"
                                      f"{self.log_tail()}")
            return is_ready(self.url)

        try:
            if wait_until(ready, timeout_s, interval_s=0.3):
                return self
        except KeyboardInterrupt:  # processes.Stopped: a start cut short leaves nothing behind
            self.stop()
            raise
        self.stop()
        raise PrometheusError(f"prometheus not ready on {self.url} after {timeout_s:.0f}s:\n"
                              f"{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text("utf-8", "replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(psutil.NoSuchProcess):
            stop_processes([psutil.Process(self.proc.pid)], timeout_s=timeout_s,
                           what="prometheus", log=print)
        self.proc.wait(timeout=10)

    def query(self, expr: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Instant query through the HTTP API: the result vector (or matrix) list."""
        from urllib.parse import urlencode

        doc = http_get_json(f"{self.url}/api/v1/query?{urlencode({'query': expr})}", timeout)
        if doc.get("status") != "success":
            raise PrometheusError(f"query {expr!r} failed: {doc}")
        result = doc["data"]["result"]
        return result if isinstance(result, list) else [result]


    def query_rules(self) -> list[dict[str, Any]]:
        """The rule groups Prometheus loaded, with each rule's health and last error."""
        doc = http_get_json(f"{self.url}/api/v1/rules")
        return list(doc["data"]["groups"])


# --------------------------------------------------------------------------- the command


def state_dir(settings: Settings) -> Path:
    """``.freshrec/prometheus`` (beside the local broker's state)."""
    return Path(settings.local.state_dir).expanduser().resolve().parent / "prometheus"


def _pid_file(settings: Settings) -> Path:
    return state_dir(settings) / "prometheus.pid"


def _our_process(settings: Settings) -> psutil.Process | None:
    """The Prometheus this command started, if it still runs."""
    try:
        proc = psutil.Process(int(_pid_file(settings).read_text().strip()))
        cmd = " ".join(proc.cmdline())
    except (OSError, ValueError, psutil.Error):
        return None
    return proc if str(state_dir(settings)) in cmd and "prometheus" in cmd else None


def up(args: argparse.Namespace, settings: Settings) -> int:
    if binary("prometheus") is None:
        print(f"freshrec prometheus: {INSTALL_HINT}", file=sys.stderr)
        return 1
    listen = args.listen
    running = _our_process(settings)
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
    _pid_file(settings).write_text(f"{server.proc.pid}\n")
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
    proc = _our_process(settings)
    if proc is None:
        print("prometheus: not running")
        _pid_file(settings).unlink(missing_ok=True)
        return 0
    stop_processes([proc], timeout_s=20, what="prometheus", log=print)
    _pid_file(settings).unlink(missing_ok=True)
    print(f"prometheus: stopped (pid {proc.pid})")
    return 0


def status(args: argparse.Namespace, settings: Settings) -> int:
    proc = _our_process(settings)
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
        description=__doc__.split("\n\n>>>")[0],
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


# ------------------------------------------------------------ the metrics table in docs

DOCS = REPO_ROOT / "docs" / "metrics.md"
TABLE_BEGIN = ("<!-- metrics-table: generated by `freshrec prometheus docs` "
               "from freshrec/metrics.py -->")
TABLE_END = "<!-- end of metrics-table -->"
REPLAY_SERIES = (
    ("freshrec_replay_events_total", "counter", "", "Events replayed (test-then-learn)."),
    ("freshrec_replay_rate_events_per_second", "gauge", "", "Achieved replay rate."),
    ("freshrec_replay_recall", "gauge", "model, k",
     "Prequential Recall@k (10, 20) of each model, set when the replay ends."),
)


def render_metrics_table() -> str:
    """The Markdown table of every metric, from ``freshrec.metrics`` (docs/metrics.md)."""
    from freshrec.metrics import JOB_METRICS, PROCESS_METRICS, SERVE_METRICS, exported_names

    rows = ["| name | type | labels | meaning | exported as (what Prometheus stores) "
            "| reported by | port |", "|---|---|---|---|---|---|---|"]
    for spec in JOB_METRICS.values():
        exported = "<br>".join(f"`{n}`" for n in exported_names(spec))
        rows.append(f"| `{spec.name}` | {spec.kind} | {', '.join(spec.labels) or '-'} | "
                    f"{spec.help} | {exported} | job operator `{spec.operator}` | "
                    "9249 (`job.metrics_port`); cluster 9250-9260 |")
    for spec in PROCESS_METRICS.values():
        proc = spec.name.split("_")[1]
        port = {"produce": PRODUCE_METRICS_PORT, "replay": REPLAY_METRICS_PORT}.get(proc)
        rows.append(f"| `{spec.name}` | {spec.kind} | {', '.join(spec.labels) or '-'} | "
                    f"{spec.help} | `{spec.name}` | `freshrec {proc}` | "
                    f"`--metrics-port` (prometheus.yml: {port}) |")
    for spec in SERVE_METRICS.values():
        rows.append(f"| `{spec.name}` | {spec.kind} | {', '.join(spec.labels) or '-'} | "
                    f"{spec.help} | `{spec.name}` | `freshrec serve` | "
                    f"`serve.port` (prometheus.yml: {SERVE_PORT}), path /metrics |")
    known = set(PROCESS_METRICS)
    for name, kind, labels, meaning in REPLAY_SERIES:
        if name not in known:
            rows.append(f"| `{name}` | {kind} | {labels or '-'} | {meaning} | `{name}` | "
                        f"`freshrec replay` | `--metrics-port` (prometheus.yml: "
                        f"{REPLAY_METRICS_PORT}) |")
    return "\n".join(rows) + "\n"


def docs_table_section(text: str) -> str:
    """The generated part of docs/metrics.md (between the markers)."""
    start = text.index(TABLE_BEGIN) + len(TABLE_BEGIN)
    return text[start:text.index(TABLE_END)].strip("\n") + "\n"


def write_docs_table(path: Path = DOCS) -> bool:
    """Rewrite the generated table in docs/metrics.md; True if it changed."""
    text = path.read_text()
    start = text.index(TABLE_BEGIN) + len(TABLE_BEGIN)
    new = text[:start] + "\n" + render_metrics_table() + text[text.index(TABLE_END):]
    if new != text:
        path.write_text(new)
    return new != text


# ------------------------------------------------- prometheus-client metrics of `replay`


class ReplayMetrics:
    """``freshrec replay --metrics-port``: progress of the replay, quality when done.

    Wraps the replay's progress bar, so the replay loop itself is unchanged.
    """

    def __init__(self, port: int, progress: Any) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

        from freshrec.metrics import PROCESS_METRICS as SPECS

        self.registry = CollectorRegistry()
        self.progress = progress
        # prometheus-client appends _total to counters itself.
        self.events = Counter("freshrec_replay_events", SPECS["freshrec_replay_events_total"].help,
                              registry=self.registry)
        rate = SPECS["freshrec_replay_rate_events_per_second"]
        self.rate = Gauge(rate.name, rate.help, registry=self.registry)
        recall = SPECS["freshrec_replay_recall"]
        self.recall = Gauge(recall.name, recall.help, recall.labels, registry=self.registry)
        self._start = time.perf_counter()
        start_http_server(port, registry=self.registry)

    def update(self, n: int = 1, note: str = "") -> None:
        self.events.inc(n)
        elapsed = time.perf_counter() - self._start
        self.rate.set(self.progress.n / elapsed if elapsed > 0 else 0.0)
        self.progress.update(n, note)

    def close(self, note: str = "") -> None:
        self.progress.close(note)

    def __getattr__(self, name: str) -> Any:  # total, n, ... of the wrapped progress bar
        return getattr(self.progress, name)

    def report(self, results: Mapping[str, Any]) -> None:
        for model, result in results.items():
            summary = result.summary() if hasattr(result, "summary") else dict(result)
            for key, value in summary.items():
                if key.startswith("recall@") and isinstance(value, int | float):
                    self.recall.labels(model=model, k=key.removeprefix("recall@")).set(value)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(up(argparse.Namespace(listen=DEFAULT_LISTEN, produce_port=PRODUCE_METRICS_PORT,
                                   replay_port=REPLAY_METRICS_PORT, scrape_interval="5s"),
                load_settings()))
