"""The job's native modules load safely on pemja thread states (flink_jobs.native_imports).

Without ``import_native_modules`` this job hangs for good: importing ``flink_jobs.operators``
inside ``map`` loads scipy's pybind11 modules on the task's thread state, whose
``PyGILState_Ensure`` waits for the GIL its own thread holds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.job_harness import REPO_ROOT


def test_operators_imported_while_processing_a_record(tmp_path: Path) -> None:
    env = {**os.environ, "FLINK_LOG_DIR": str(tmp_path / "flink-logs")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.late_import", str(tmp_path / "checkpoints")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT, env=env,
        start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the job hung importing the operators inside map():\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    # Each record's value, then the interpreter's BLAS and torch threads: one each.
    assert "results ['2:[1]:1', '3:[1]:1', '4:[1]:1']" in out, out[-3000:]
