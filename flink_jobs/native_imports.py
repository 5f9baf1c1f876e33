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
    torch is left with one intra-op thread."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for name in names:
                module = importlib.import_module(name)
                if name == "torch":
                    # One interpreter runs every Python operator of a TaskManager: torch's
                    # intra-op threads spin between calls and took CPU from the JVM and the
                    # other operators (the job's user side ran 1.5x faster with one thread).
                    module.set_num_threads(1)
        except BaseException as exc:  # handed to the caller's thread below
            errors.append(exc)

    thread = threading.Thread(target=run, name="freshrec-native-imports")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def freeze_imported_objects() -> None:
    """Put every object the garbage collector tracks so far out of its reach for good: the
    functions, types and constants of the imported modules (torch, River, SciPy, PyFlink:
    ~280k in a TaskManager's interpreter), which live as long as it does anyway. Each full
    collection scanned them all and held the GIL, so no operator ran, for 150-190 ms (six
    times a minute at 500 events/s); afterwards it scans the job's own objects, < 10 ms.
    The operators call it when they open, once every module is imported."""
    gc.freeze()
