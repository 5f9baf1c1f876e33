"""``freshrec replay --workers N``: the models of a replay split over worker processes.

A model's figures depend on the log alone: the tests, their exclusions and their sampled
negatives come from the stream and a seeded generator, never from the other models. So the
models can be replayed in groups, one process per group, each reading the log itself, and
the results merged are those of one process replaying them all (a test checks it). The
groups are balanced by each model's typical cost (:data:`COST`), the parent draws one
progress line (the slowest group's) and the workers start with ``spawn``: a fork of a
process that has run torch can hang in its thread pools.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from online_models.config import ModelConfig
from online_models.eval_results import ModelResult

# Relative CPU time of a model over a replay (measured on the dense generated log of
# docs/model.md: its learning plus a list and 101 sampled scores per test); others cost 1.
COST = {"freshrec": 10.0, "freshrec_tuned": 10.0, "experiment": 10.0, "sknn": 4.0,
        "item_knn": 3.0}
_REPORT_EVERY = 500  # events between a worker's progress reports


def groups(names: Sequence[str], workers: int) -> list[list[str]]:
    """``names`` split into at most ``workers`` groups of similar cost (the costliest model
    first, each to the cheapest group so far); each group keeps the order of ``names``.

    >>> groups(["freshrec", "popularity", "recent", "item_knn", "sknn"], 2)
    [['freshrec'], ['popularity', 'recent', 'item_knn', 'sknn']]
    >>> groups(["freshrec", "popularity"], 4)
    [['freshrec'], ['popularity']]
    """
    n = max(1, min(workers, len(names)))
    load = [0.0] * n
    owner: dict[str, int] = {}
    for name in sorted(names, key=lambda m: -COST.get(m, 1.0)):
        g = min(range(n), key=load.__getitem__)
        owner[name] = g
        load[g] += COST.get(name, 1.0)
    return [[m for m in names if owner[m] == g] for g in range(n)]


def default_workers(n_events: int, n_models: int) -> int:
    """Auto: one process per CPU for a log long enough to repay their start (~5 s each)."""
    if n_events < 20_000:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), n_models))


@dataclass(frozen=True, slots=True)
class ReplayPart:
    """What one worker replays: a group of models over the whole log."""

    path: str
    fmt: str
    limit: int
    names: tuple[str, ...]
    config: ModelConfig
    tuned: ModelConfig | None
    experiment: str | None
    k: int
    eval_every: int
    warmup: int
    threads: int


class _Counter:
    """A progress sink for :func:`prequential` that publishes its count to the parent."""

    def __init__(self, shared: Any) -> None:
        self.shared, self.n = shared, 0

    def update(self, n: int = 1, note: str = "") -> None:
        self.n += n
        if self.n % _REPORT_EVERY == 0:
            self.shared.value = self.n

    def close(self, note: str = "") -> None:
        self.shared.value = self.n


# A part's replay: its results by model and the experiment's report if it has one.
PartResult = tuple[dict[str, ModelResult], str | None]


def _work(replay: Callable[[ReplayPart, Any], PartResult], part: ReplayPart, shared: Any,
          out: Any) -> None:
    start = time.perf_counter()
    try:
        import torch
        from threadpoolctl import threadpool_limits

        # The workers share the CPUs: torch's and BLAS's idle pool threads would spin
        # against each other.
        torch.set_num_threads(part.threads)
        threadpool_limits(1, user_api="blas")
        counter = _Counter(shared)
        results, text = replay(part, counter)
        counter.close()
        out.put((part.names, results, text, time.perf_counter() - start, None))
    except BaseException:  # the parent reports it, naming the models
        out.put((part.names, None, None, 0.0, traceback.format_exc()))


class WorkerError(RuntimeError):
    """A worker failed; the message names its models and carries its traceback."""


def replay_in_workers(replay: Callable[[ReplayPart, Any], PartResult],
                      parts: Sequence[ReplayPart], order: Sequence[str], progress: Any,
                      log: Callable[[str], None]) -> PartResult:
    """``replay(part, progress)`` of each part in its own process (``replay`` must be a
    module-level function: the workers import it); the merged results in the order of
    ``order`` and the experiment's report if one part had it. ``progress`` gets the count
    of the slowest part; ``log`` each worker's time when it is done."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    shared = [ctx.Value("q", 0) for _ in parts]
    procs = [ctx.Process(target=_work, args=(replay, p, s, out), daemon=True)
             for p, s in zip(parts, shared, strict=True)]
    got: dict[tuple[str, ...], PartResult] = {}
    shown = 0
    try:
        for proc in procs:
            proc.start()
        while len(got) < len(parts):
            done = min(s.value for s in shared)
            if done > shown:
                progress.update(done - shown)
                shown = done
            try:
                names, results, text, took_s, error = out.get(timeout=0.5)
            except queue.Empty:  # nobody finished in the while: is anybody dead?
                for part, proc in zip(parts, procs, strict=True):
                    if proc.exitcode not in (None, 0) and part.names not in got:
                        raise WorkerError(f"the worker of {', '.join(part.names)} exited with "
                                          f"code {proc.exitcode}") from None
                continue
            if error is not None:
                raise WorkerError(f"the worker of {', '.join(names)} failed:\n{error}")
            got[names] = (results, text)
            log(f"worker of {', '.join(names)}: done in {took_s:,.0f} s")
        progress.update(max(s.value for s in shared) - shown)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join(10)
    merged: dict[str, ModelResult] = {}
    report = None
    for results, text in got.values():
        merged.update(results)
        report = report or text
    return {name: merged[name] for name in order}, report
