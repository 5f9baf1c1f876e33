"""A thread-mode job whose only Python function imports the freshrec operators while it
processes a record, the riskiest moment for native imports (see flink_jobs.native_imports).

Kept free of heavy imports at module level: the JVM's interpreter imports this module to
unpickle the function, and must meet ``flink_jobs`` for the first time inside ``map``.
Run as ``python -m tests.integration.late_import <checkpoint dir>``; prints the results
with the BLAS and torch thread counts the interpreter was left with.
"""

from __future__ import annotations

import sys


def import_operators(x: int) -> int:
    import flink_jobs.operators  # noqa: F401  (the import is the point)

    return x + 1


def with_threads(x: int) -> str:
    """``x``, then the threads of numpy's BLAS and of torch in the TaskManager's interpreter
    (both held to one by flink_jobs.native_imports)."""
    import torch
    from threadpoolctl import threadpool_info

    blas = sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
    return f"{x}:{blas}:{torch.get_num_threads()}"


def main(checkpoint_dir: str) -> None:
    from pyflink.common import Types

    from flink_jobs.environment import make_environment
    from freshrec_common.settings import load_settings

    settings = load_settings(overrides=[f"job.checkpoint_dir={checkpoint_dir}",
                                        "job.parallelism=1", "job.metrics_port=0"])
    env = make_environment(settings, jars=[])
    stream = env.from_collection([1, 2, 3], type_info=Types.INT())
    with (stream.map(import_operators, Types.INT()).map(with_threads, Types.STRING())
          .execute_and_collect()) as results:
        print("results", sorted(results), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
