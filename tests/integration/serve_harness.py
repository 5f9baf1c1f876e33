"""Run ``freshrec serve`` as a real process and talk to it over real HTTP (tests, bench).

The process runs in its own session and is stopped with SIGTERM (its clean stop is part of
what the tests check); a process that outlives :meth:`ServeProcess.stop` is killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from devstack.processes import free_ports, kill_tree
from freshrec_common.polling import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ServeProcess:
    """``freshrec --set ... serve`` on a free loopback port, its output in ``log_path``."""

    overrides: Sequence[str]
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)
    port: int = field(default_factory=lambda: free_ports(1)[0])
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServeProcess:
        argv = [sys.executable, "-m", "freshrec.cli",
                *[a for o in self.overrides for a in ("--set", o)],
                "serve", "--host", self.host, "--port", str(self.port)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                start_new_session=True)
        return self

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text("utf-8", "replace").splitlines()[-lines:])

    def get(self, path: str, headers: Mapping[str, str] | None = None,
            timeout: float = 10.0) -> Reply:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                     headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return Reply(resp.status, dict(resp.headers), resp.read())
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, dict(exc.headers), exc.read())

    def wait_ready(self, timeout_s: float = 60.0) -> float:
        """Until /healthz answers 200; seconds waited. Fails with the log if it exits."""
        t0 = time.monotonic()

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"freshrec serve exited with {self.proc.returncode}:\n"
                                     f"{self.log_tail()}")
            try:
                return self.get("/healthz", timeout=2).status == 200
            except OSError:  # not listening yet
                return False

        if wait_until(ready, timeout_s, interval_s=0.05):
            return time.monotonic() - t0
        raise AssertionError(f"freshrec serve not ready in {timeout_s:.0f}s:\n{self.log_tail()}")

    def metric(self, name: str, headers: Mapping[str, str] | None = None,
               **labels: str) -> float:
        """The value of one sample of /metrics (0 when absent)."""
        text = self.get("/metrics", headers).body.decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def stop(self, timeout_s: float = 30.0, sig: signal.Signals = signal.SIGTERM) -> int:
        """Send ``sig``; the exit code (killed and failed if it does not stop in time)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                kill_tree(self.proc.pid, what="freshrec serve", log=print)
                self.proc.wait(timeout=30)
                raise AssertionError(f"freshrec serve ignored {sig.name} for {timeout_s:.0f}s:\n"
                                     f"{self.log_tail()}") from None
        return int(self.proc.returncode)
