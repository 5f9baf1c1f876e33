"""What the benchmarks share: progress lines, the machine, processes and scraping."""

from __future__ import annotations

import os
import platform
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"

# The environment of a child process that imports ``bench`` (a Flink job built in a
# benchmark module): its UDFs are pickled by reference to that module.
CHILD_ENV = {"PYTHONUNBUFFERED": "1",
             "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT),
                                                       os.environ.get("PYTHONPATH", "")) if p)}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "?"
    try:  # the model name is only in /proc/cpuinfo (psutil does not report it)
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       "?")
    except OSError:
        pass
    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
    except OSError:
        java = ""
    return {"cpus": os.cpu_count(), "cpu": cpu,
            "memory": f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
            "os": platform.platform(), "python": platform.python_version(),
            "java": java.splitlines()[0] if java else "?", "loadavg_at_start": os.getloadavg()}


def rss_mib(pid: int | None = None) -> float | None:
    """Resident memory of a process (this one by default); None once it is gone."""
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def java_pid(pid: int) -> int | None:
    """The first JVM among the descendants of ``pid``."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return None
    for child in children:
        try:
            if child.name() == "java":
                return child.pid
        except psutil.Error:
            continue
    return None


def scrape(port: int, timeout_s: float = 5) -> list[Any]:
    """The metric families a Prometheus endpoint on 127.0.0.1 serves ([] when it does not
    answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
            text = r.read().decode("utf-8", "replace")
    except OSError:
        return []
    return list(text_string_to_metric_families(text))


def sample_sums(families: list[Any]) -> dict[str, float]:
    """Sample name -> sum of its values over all label sets (e.g. over subtasks)."""
    out: dict[str, float] = {}
    for family in families:
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out
