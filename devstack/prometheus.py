"""A local Prometheus scraping the local stack (``freshrec prometheus up``, the e2e tests).

Runs the ``prometheus`` binary of Debian's ``prometheus`` package (installed by ``make
setup`` as root; see ``deploy/prometheus/install.sh``) with a configuration generated from
``deploy/prometheus/prometheus.yml``: the ports come from the settings (``job.metrics_port``,
``cluster.metrics_ports``) and the flags, the alert rules of ``deploy/prometheus/rules`` are
loaded, the data lives under ``.freshrec/prometheus`` and the web UI and API listen on
``127.0.0.1:9090``. It never touches the Debian service.

>>> from freshrec_common.settings import load_settings
>>> targets = scrape_targets(load_settings(), produce_port=9300, replay_port=9301)
>>> targets["freshrec-flink"], targets["freshrec-flink-cluster"][:2]
(['127.0.0.1:9249'], ['127.0.0.1:9250', '127.0.0.1:9251'])
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from devstack.processes import stop_processes
from freshrec_common.polling import wait_until
from freshrec_common.settings import Settings

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
        except KeyboardInterrupt:  # a stop signal: a start cut short leaves nothing behind
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


def state_dir(settings: Settings) -> Path:
    """``.freshrec/prometheus`` (beside the local broker's state)."""
    return Path(settings.local.state_dir).expanduser().resolve().parent / "prometheus"


def pid_file(settings: Settings) -> Path:
    return state_dir(settings) / "prometheus.pid"


def our_process(settings: Settings) -> psutil.Process | None:
    """The Prometheus this command started, if it still runs."""
    try:
        proc = psutil.Process(int(pid_file(settings).read_text().strip()))
        cmd = " ".join(proc.cmdline())
    except (OSError, ValueError, psutil.Error):
        return None
    return proc if str(state_dir(settings)) in cmd and "prometheus" in cmd else None
