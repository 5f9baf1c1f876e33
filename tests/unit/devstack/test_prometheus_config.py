"""Prometheus config, alert rules and their unit tests (promtool), the Grafana dashboard,
and the metrics table of docs/metrics.md against freshrec/metrics.py.

The promtool checks need Debian's `prometheus` package (installed by `make setup` as root);
without it they are skipped with a loud warning, never silently.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import urllib.request
import warnings
from pathlib import Path

import pytest

from devstack.prometheus import (
    CONFIG_TEMPLATE,
    DASHBOARD,
    RULE_TESTS_DIR,
    RULES_DIR,
    binary,
    load_yaml,
    render_config,
    scrape_targets,
    write_config,
)
from freshrec.metrics_docs import DOCS, docs_table_section, render_metrics_table
from freshrec.replay import ReplayMetrics
from freshrec_common.metrics import JOB_METRICS, PROCESS_METRICS, SERVE_METRICS, exported_names
from freshrec_common.settings import load_settings

PROMTOOL = binary("promtool")
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
GRAFANA = DASHBOARD.parents[1]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if PROMTOOL is None:
        msg = ("PROMTOOL NOT INSTALLED: promtool check config / check rules / test rules are "
               "SKIPPED. Install Debian's `prometheus` package (make setup as root does it): "
               "sudo apt-get install -y --no-install-recommends prometheus")
        warnings.warn(msg, stacklevel=2)
        pytest.skip(msg)
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_promtool_check_config() -> None:
    done = promtool("check", "config", str(CONFIG_TEMPLATE))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_check_generated_config(tmp_path: Path) -> None:
    targets = scrape_targets(load_settings(overrides=["job.metrics_port=19249"]), 19300, 0)
    config = write_config(render_config(targets, "2s"), tmp_path / "prometheus.yml")
    done = promtool("check", "config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    doc = load_yaml(config)
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in doc["scrape_configs"]}
    assert jobs["freshrec-flink"] == ["127.0.0.1:19249"]
    assert jobs["freshrec-produce"] == ["127.0.0.1:19300"]
    assert jobs["freshrec-serve"] == ["127.0.0.1:8000"]
    assert "freshrec-replay" not in jobs  # port 0: not scraped
    assert len(jobs["freshrec-flink-cluster"]) == 11
    assert doc["rule_files"] == [str(RULES_DIR.resolve() / "*.yml")]


def test_promtool_check_rules() -> None:
    done = promtool("check", "rules", *map(str, RULE_FILES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_test_rules() -> None:
    done = promtool("test", "rules", *map(str, sorted(RULE_TESTS_DIR.glob("*.yml"))))
    assert done.returncode == 0, done.stdout + done.stderr


def _alerts() -> list[str]:
    return [r["alert"] for f in RULE_FILES for g in load_yaml(f)["groups"] for r in g["rules"]
            if "alert" in r]


def test_every_alert_has_a_firing_and_a_silent_test() -> None:
    alerts = _alerts()
    assert len(alerts) >= 8
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS_DIR.glob("*.yml"):
        for test in load_yaml(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    assert set(alerts) - firing == set(), "alerts without a firing test"
    assert set(alerts) - silent == set(), "alerts without a non-firing test"


def test_alerts_documented() -> None:
    text = DOCS.read_text()
    assert [a for a in _alerts() if f"`{a}`" not in text] == []


def test_docs_table_matches_freshrec_metrics() -> None:
    assert docs_table_section(DOCS.read_text()) == render_metrics_table(), (
        "docs/metrics.md is out of date: run `freshrec prometheus docs`")
    for name in [*JOB_METRICS, *PROCESS_METRICS, *SERVE_METRICS]:
        assert f"`{name}`" in DOCS.read_text()


def test_readme_links_the_metrics_docs() -> None:
    assert "docs/metrics.md" in (DOCS.parents[1] / "README.md").read_text()


def test_exported_names_follow_flink_scoping() -> None:
    names = [n for spec in JOB_METRICS.values() for n in exported_names(spec)]
    assert all(n.startswith("flink_taskmanager_job_task_operator_freshrec_") for n in names)
    spec = JOB_METRICS["freshrec_job_ingest_to_recommendation_latency_seconds"]
    assert exported_names(spec)[0].endswith("freshrec_le_job_ingest_to_recommendation_"
                                               "latency_seconds_bucket")


def _dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def test_dashboard_covers_the_table_and_uses_the_provisioned_datasource() -> None:
    doc = json.loads(DASHBOARD.read_text())
    exprs = " ".join(_dashboard_exprs())
    uncovered = [spec.name for spec in JOB_METRICS.values()
                 if not any(n in exprs for n in exported_names(spec))
                 and not (spec.kind == "histogram" and "latency_seconds_bucket" in exprs)]
    assert uncovered == []
    assert [name for name in SERVE_METRICS if name.removesuffix("_total") not in exprs] == []
    for word in ("records_lag_max", "numberOfFailedCheckpoints", "lastCheckpointSize",
                 "backPressuredTimeMsPerSecond", "freshrec_produce_events_acked_total"):
        assert word in exprs
    datasources = load_yaml(GRAFANA / "provisioning" / "datasources" / "freshrec.yml")
    uid = datasources["datasources"][0]["uid"]
    assert all(p["datasource"]["uid"] == uid for p in doc["panels"] if p["type"] != "row")
    assert doc["uid"] and len({p["id"] for p in doc["panels"]}) == len(doc["panels"])
    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "freshrec.yml")
    assert providers["providers"][0]["type"] == "file"


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Each panel expression is valid PromQL (checked by promtool as a recording rule)."""
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": e.replace("$__rate_interval", "1m")}
        for i, e in enumerate(_dashboard_exprs())]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps(rules))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_install_script_is_idempotent_and_never_starts_the_service() -> None:
    script = (CONFIG_TEMPLATE.parent / "install.sh").read_text()
    assert "command -v prometheus" in script and "command -v promtool" in script
    assert "--no-install-recommends prometheus" in script
    assert "policy-rc.d" in script
    assert not re.search(r"systemctl (start|enable)|service prometheus start", script)


def test_replay_metrics_are_served() -> None:
    class Bar:
        n = 0

        def update(self, n: int = 1, note: str = "") -> None:
            self.n += n

        def close(self, note: str = "") -> None:
            pass

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics = ReplayMetrics(port, Bar())
    metrics.update(5)
    metrics.report({"freshrec": {"recall@10": 0.25, "recall@20": 0.4, "coverage": 0.1}})
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "freshrec_replay_events_total 5.0" in body
    assert 'freshrec_replay_recall{k="10",model="freshrec"} 0.25' in body
    assert "freshrec_replay_rate_events_per_second" in body
