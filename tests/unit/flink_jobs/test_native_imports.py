"""``flink_jobs`` loads every third-party native module its operators need up front, on a
thread of Python's own (see flink_jobs.native_imports), so none loads later on a pemja
thread state."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from flink_jobs.native_imports import GC_THRESHOLDS, import_native_modules

CHECK = """
import sys
import types

sys.modules["pemja"] = types.ModuleType("pemja")  # as in a TaskManager's interpreter

def native():
    return {name for name, mod in list(sys.modules.items())
            if (getattr(mod, "__file__", None) or "").endswith(".so")
            and "site-packages" in mod.__file__}

import flink_jobs
before = native()
import flink_jobs.operators, flink_jobs.recommender_job, online_models.ann, online_models.model
import torch, usearch.index  # imported lazily inside the model core's functions
print(sorted(native() - before))
"""


def test_operator_modules_load_no_native_module_of_their_own() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.strip() == "[]", f"native modules loaded after flink_jobs: {out}"


def test_a_client_process_does_not_load_torch() -> None:
    check = "import sys, flink_jobs.recommender_job; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.strip() == "False"


def test_import_errors_reach_the_caller() -> None:
    with pytest.raises(ModuleNotFoundError, match="freshrec_no_such_module"):
        import_native_modules(("freshrec_no_such_module",))


def test_imported_objects_are_frozen_out_of_full_collections() -> None:
    check = ("import gc, flink_jobs.operators\n"
             "from flink_jobs.native_imports import quiet_garbage_collector\n"
             "before = len(gc.get_objects()); quiet_garbage_collector()\n"
             "print(before, gc.get_freeze_count(), len(gc.get_objects()), *gc.get_threshold())")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    before, frozen, after, *thresholds = map(int, out)
    # The modules' objects (River, SciPy, PyFlink, ...) leave what a full collection scans.
    assert frozen > 50_000 and after < before / 10
    assert tuple(thresholds) == GC_THRESHOLDS != (700, 10, 10)


def test_torch_and_blas_are_left_with_one_thread() -> None:
    check = ("import numpy, torch\n"
             "from threadpoolctl import threadpool_info\n"
             "from flink_jobs.native_imports import import_native_modules\n"
             "import_native_modules(('numpy', 'torch'))\n"
             "print(torch.get_num_threads(), sorted({i['num_threads'] for i in threadpool_info()"
             " if i['user_api'] == 'blas'}))")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         check=True, timeout=120, env={**os.environ, "OPENBLAS_NUM_THREADS": "2"}
                         ).stdout
    assert out.strip() == "1 [1]"


def test_debug_records_are_dropped_before_they_are_formatted() -> None:
    # As pemja leaves the embedded interpreter: the root logger at DEBUG, a handler that
    # formats every record it is handed.
    check = ("import io, logging\n"
             "from flink_jobs.native_imports import quiet_debug_logs\n"
             "reprs = []\n"
             "class Response:\n"
             "    def __repr__(self):\n"
             "        reprs.append(1)\n"
             "        return 'response'\n"
             "out = io.StringIO()\n"
             "root = logging.getLogger(); root.setLevel(logging.DEBUG)\n"
             "root.addHandler(logging.StreamHandler(out))\n"
             "kafka_log = logging.getLogger('kafka.net.connection')\n"
             "kafka_log.debug('before: %r', Response())\n"
             "quiet_debug_logs()\n"
             "kafka_log.debug('after: %r', Response())\n"
             "kafka_log.info('info: %s', 'kept')\n"
             "print(len(reprs), out.getvalue().split())")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.strip() == "1 ['before:', 'response', 'info:', 'kept']"
