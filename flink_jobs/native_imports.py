"""Import the job's native extension modules on a thread of Python's own.

In thread mode PyFlink runs Python on thread states that pemja creates for Flink's task
threads. An extension that calls ``PyGILState_Ensure()`` while it loads (pybind11 modules
do: ``scipy.spatial``, which River imports, and torch) looks up the thread state registered
for the OS thread; when that is not the one running (a second operator chained in the same
task, or any call while processing records) it waits for the GIL its own thread holds, and
the task stays INITIALIZING (or stuck) for good. That hung about one job start in twenty
here (``tests/integration/test_native_imports.py`` reproduces it without this module). It is
the embedded-interpreter deadlock of pytorch/pytorch#32572 (closed without a fix); pemja
0.5.7, torch 2.15 and SciPy 1.17 still have it.

A thread started by ``threading`` owns a regular, registered thread state, so the same
imports are safe there; afterwards the operators find the modules in ``sys.modules``.
``flink_jobs/__init__.py`` calls this in the embedded interpreter (where ``pemja`` is loaded)
before any operator module imports them.
"""

from __future__ import annotations

import gc
import importlib
import logging
import sys
import threading

# Extension-bearing packages the operators and the model core import (some lazily).
NATIVE_MODULES = (
    "numpy",
    "orjson",
    "scipy.spatial",
    "river.cluster",
    "river.drift",
    "river.stats",
    "river.utils",
    "torch",
    "usearch.index",
)


def import_native_modules(names: tuple[str, ...] = NATIVE_MODULES) -> None:
    """Import ``names`` on a new Python thread and wait; re-raise its ImportError here.
    Then :func:`limit_native_threads`."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for name in names:
                importlib.import_module(name)
            limit_native_threads()
        except BaseException as exc:  # handed to the caller's thread below
            errors.append(exc)

    thread = threading.Thread(target=run, name="freshrec-native-imports")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def limit_native_threads() -> None:
    """One thread for torch's intra-op work and one for numpy's BLAS (OpenBLAS), if loaded.

    One interpreter runs every Python operator of a TaskManager, and the pools' idle
    threads spin between calls, taking CPU from the JVM and the other operators: torch's
    made the job's user side 1.5x slower; OpenBLAS runs products of a few hundred rows
    on every core, and one such product per list call made the whole job path 1.9x slower
    (463 against 240 us of CPU per event)."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    if "numpy" in sys.modules:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")


# Young collections every 20,000 net allocations (CPython: 700), and 20 of each generation
# before the next one is collected (CPython: 10). With the defaults the in-process job path
# (bench/model_job.py, 24k storefront events) ran 9 full collections of ~80 ms each, the
# GIL held, and spent 1.26 s of ~28 s of CPU in the collector; with these 3 and 0.41-0.49 s.
GC_THRESHOLDS = (20_000, 20, 20)


def quiet_garbage_collector() -> None:
    """Put every object the garbage collector tracks so far out of its reach for good: the
    functions, types and constants of the imported modules (torch, River, SciPy, PyFlink:
    ~280k in a TaskManager's interpreter), which live as long as it does anyway. Each full
    collection scanned them all and held the GIL, so no operator ran, for 150-190 ms (six
    times a minute at 500 events/s). Then collect less often (:data:`GC_THRESHOLDS`): a
    warm job's own objects (replica, co-visitation, state caches) still take ~80 ms per
    full collection on a slow day. The operators call it when they open, once every module
    is imported."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def quiet_debug_logs() -> None:
    """Drop DEBUG records before they are formatted. pemja sets the embedded interpreter's
    root logger to DEBUG and hands every record to Flink's log4j, so each ``log.debug`` of
    every library was formatted in Python first: kafka-python's connection logs the repr of
    every response it receives, and during a restore's changelog read (500k records) the
    reprs of its fetch responses took more of the GIL than the read itself. The operators
    call it when they open; INFO and above reach Flink's log as before."""
    logging.getLogger().setLevel(logging.INFO)
